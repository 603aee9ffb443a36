#!/usr/bin/env bash
# Builds the portier appliance image from Debian packages:
#   target/image/portier-VERSION.qcow2   KVM / qemu (compressed)
#   target/image/portier-VERSION.vhdx    Hyper-V: Generation 2 (UEFI, Secure Boot) or 1 (BIOS)
#   target/image/portier-VERSION.packages  every package and version inside
# Run as root on Debian 12:
#   sudo ./packaging/image/build.sh [--out DIR] [--mirror URL] [--security-mirror URL] [--deb F]
#
# No loop device, no boot-loader install: mmdebstrap makes the root directory, mkfs.ext4 -d
# and mtools write the file systems from directories, sfdisk lays out the GPT, qemu-img
# converts. Boot chain under UEFI: Microsoft-signed shim -> Debian-signed grub -> Debian-signed
# kernel; under BIOS: grub's boot.img in the MBR -> its core image in the BIOS boot partition.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=packaging/image

out=target/image
mirror=http://deb.debian.org/debian
security=http://deb.debian.org/debian-security
deb=
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --mirror) mirror=$2; shift 2 ;;
    --security-mirror) security=$2; shift 2 ;;
    --deb) deb=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "build.sh: must run as root (mmdebstrap writes a root file system)" >&2; exit 1; }
for tool in mmdebstrap mkfs.ext4 dumpe2fs debugfs e2fsck mkfs.vfat mcopy mmd sfdisk qemu-img dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "build.sh: $tool not found: run ./packaging/image/deps.sh" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$deb" ] || deb=$(./packaging/build-deb.sh | tail -n1)
deb=$(realpath "$deb")
# Reproducible: the time of the commit, fixed identifiers; the same package versions give the
# same files (the list is recorded in the image and beside it).
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
root_uuid=5f7e9c1a-0d3b-4c6e-9a2f-706f72746965   # ext4 file system of the root partition
disk_guid=7a9d6a2e-3c41-4b8e-8f10-706f72746965
esp_guid=c12a7328-f81f-11d2-ba4b-00a0c93ec93b      # the EFI System Partition type
esp_uuid=0b1d5e44-8c2f-4a57-b6d3-706f72746965
linux_guid=0fc63daf-8483-4772-8e79-3d69d8477de4    # Linux file system
root_part_uuid=3e8a4f10-5d26-4f0b-9c71-706f72746965
bios_guid=21686148-6449-6e6f-744e-656564454649     # BIOS boot partition (grub's core image)
bios_part_uuid=9b2c4d61-7e0a-4f38-a5c2-706f72746965
esp_mib=64
root_mib=2048

mkdir -p "$out"
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/root
mkdir -p "$rootfs"

packages=$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/packages" | grep -v '^$' | paste -sd, -)
started=$(date +%s)
echo "image: mmdebstrap bookworm ($mirror) ..."
mmdebstrap --variant=minbase --quiet \
  --include="$packages" \
  --essential-hook='echo "path-exclude=/usr/share/doc/*/changelog*" >"$1/etc/dpkg/dpkg.cfg.d/portier-image"' \
  --essential-hook='echo "path-exclude=/usr/share/man/*" >>"$1/etc/dpkg/dpkg.cfg.d/portier-image"' \
  --essential-hook='echo "path-exclude=/usr/share/locale/*" >>"$1/etc/dpkg/dpkg.cfg.d/portier-image"' \
  --essential-hook='echo "path-include=/usr/share/locale/locale.alias" >>"$1/etc/dpkg/dpkg.cfg.d/portier-image"' \
  --customize-hook="upload '$deb' /tmp/portier.deb" \
  --customize-hook='chroot "$1" apt-get install -y -q --no-install-recommends /tmp/portier.deb >/dev/null' \
  --customize-hook='rm -f "$1/tmp/portier.deb"' \
  --customize-hook="sync-in '$here/overlay' /" \
  --customize-hook="'$PWD/$here/customize.sh' \"\$1\" '$PWD'" \
  bookworm "$rootfs" \
  "deb $mirror bookworm main" \
  "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"

echo "image: boot files and file systems ..."
# The boot chain on the ESP: shim as the removable-media path, grub beside it (shim loads
# grubx64.efi from its own directory), the grub.cfg where Debian's signed grub looks.
esp=$work/esp
mkdir -p "$esp/EFI/BOOT" "$esp/EFI/debian"
cp "$rootfs/usr/lib/shim/shimx64.efi.signed" "$esp/EFI/BOOT/BOOTX64.EFI"
cp "$rootfs/usr/lib/shim/mmx64.efi.signed" "$esp/EFI/BOOT/mmx64.efi"
cp "$rootfs/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed" "$esp/EFI/BOOT/grubx64.efi"
sed "s/@ROOT_UUID@/$root_uuid/g" "$here/grub.cfg" >"$esp/EFI/debian/grub.cfg"
cp "$esp/EFI/debian/grub.cfg" "$esp/EFI/BOOT/grub.cfg"
# BIOS boot reads the same grub.cfg from the root's /boot/grub (core.img's prefix).
cp "$esp/EFI/debian/grub.cfg" "$rootfs/boot/grub/grub.cfg"
find "$esp" "$rootfs" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"

mkfs.vfat -C -F 32 -S 512 -s 1 -n EFI -i 504f5254 --invariant "$work/esp.img" $((esp_mib * 1024)) >/dev/null
MTOOLS_SKIP_CHECK=1 mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/EFI/debian
for f in EFI/BOOT/BOOTX64.EFI EFI/BOOT/mmx64.efi EFI/BOOT/grubx64.efi EFI/BOOT/grub.cfg EFI/debian/grub.cfg; do
  MTOOLS_SKIP_CHECK=1 mcopy -m -i "$work/esp.img" "$esp/$f" "::/$f"
done

E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L portier-root -U "$root_uuid" \
  -E "hash_seed=$root_uuid,root_owner=0:0" -d "$rootfs" "$work/root.img" "${root_mib}M"
# mkfs.ext4 -d copies each file's ctime and atime, which the build itself sets (touch cannot
# set a ctime): pin both to the commit's time on every inode in use.
dumpe2fs "$work/root.img" 2>/dev/null | awk -v t="@$SOURCE_DATE_EPOCH" '
  /^Inode count:/ { count = $3 }
  /^Inodes per group:/ { per = $4 }
  /^Group [0-9]+:/ { group = $2 + 0 }
  /^  Free inodes:/ {
    split("", free); s = $0; sub(/^  Free inodes: */, "", s)
    n = split(s, ranges, /, */)
    for (r = 1; r <= n; r++) {
      if (ranges[r] == "") continue
      m = split(ranges[r], ends, "-"); lo = ends[1] + 0; hi = (m == 2 ? ends[2] : ends[1]) + 0
      for (i = lo; i <= hi; i++) free[i] = 1
    }
    last = (group + 1) * per; if (last > count) last = count
    for (i = group * per + 1; i <= last; i++)
      if (!(i in free)) printf "sif <%d> ctime %s\nsif <%d> atime %s\n", i, t, i, t
  }' >"$work/times.debugfs"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$work/times.debugfs" "$work/root.img" >/dev/null 2>&1
e2fsck -fn "$work/root.img" >/dev/null || { echo "build.sh: the root file system does not check clean" >&2; exit 1; }

# GPT: the first MiB holds the headers and, from sector 34, the BIOS boot partition; then the
# ESP, the root partition, 1 MiB for the backup header.
raw=$work/disk.raw
total_mib=$((1 + esp_mib + root_mib + 1))
truncate -s "${total_mib}M" "$raw"
core=$rootfs/boot/grub/core.img
core_sectors=$((($(stat -c %s "$core") + 511) / 512))
[ "$core_sectors" -le 2014 ] || { echo "build.sh: grub's core image ($core_sectors sectors) exceeds the BIOS boot partition" >&2; exit 1; }
sfdisk --quiet "$raw" <<EOF
label: gpt
label-id: $disk_guid
first-lba: 34
start=2048, size=$((esp_mib * 2048)), type=$esp_guid, uuid=$esp_uuid, name="EFI System"
start=$((2048 + esp_mib * 2048)), size=$((root_mib * 2048)), type=$linux_guid, uuid=$root_part_uuid, name="portier root"
start=34, size=2014, type=$bios_guid, uuid=$bios_part_uuid, name="BIOS boot"
EOF
dd if="$work/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$raw" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
# BIOS: the core image at sector 34, told where its own second sector is (the blocklist at
# byte 500 of its first sector); boot.img's code (440 bytes: the protective MBR's disk
# signature and partition table stay) in sector 0, told where the core image starts (byte
# 0x5c). What grub-install does, without a device.
le64() { perl -e 'print pack("Q<", $ARGV[0])' "$1"; }
dd if="$core" of="$raw" bs=512 seek=34 conv=notrunc status=none
le64 35 | dd of="$raw" bs=1 seek=$((34 * 512 + 500)) conv=notrunc status=none
dd if="$rootfs/usr/lib/grub/i386-pc/boot.img" of="$raw" bs=1 count=440 conv=notrunc status=none
le64 34 | dd of="$raw" bs=1 seek=$((0x5c)) conv=notrunc status=none

name=portier-$version
cp "$rootfs/usr/share/portier/image/packages" "$out/$name.packages"
echo "image: qemu-img convert ..."
qemu-img convert -c -O qcow2 "$raw" "$out/$name.qcow2.part"
# Hyper-V: a dynamic VHDX whose size is a whole number of MiB.
qemu-img convert -O vhdx -o subformat=dynamic "$raw" "$out/$name.vhdx.part"
mv "$out/$name.qcow2.part" "$out/$name.qcow2"
mv "$out/$name.vhdx.part" "$out/$name.vhdx"
echo "image: $out/$name.qcow2 ($(du -m "$out/$name.qcow2" | cut -f1) MiB), $out/$name.vhdx ($(du -m "$out/$name.vhdx" | cut -f1) MiB), $(wc -l <"$out/$name.packages") packages, built in $(($(date +%s) - started)) s"
