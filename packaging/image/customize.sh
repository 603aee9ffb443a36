#!/usr/bin/env bash
# mmdebstrap customize hook: $1 is the image's root directory, $2 the source tree. Runs after
# the packages and the overlay are in place.
set -euo pipefail
root=$1
src=$2
inroot() { chroot "$root" "$@"; }

inroot useradd --system --user-group --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin portier
inroot systemctl enable --quiet portier.service portier-seed.service systemd-networkd.service ssh.service
inroot systemctl enable --quiet systemd-timesyncd.service 2>/dev/null || true

# Console login: root without a password until one is set (profile.d/portier-password.sh asks
# for it at the console). Not an expired password: sshd would then refuse key logins without a
# terminal. Over the network only keys (sshd_config.d/portier.conf).
inroot passwd -q -d root

cat >"$root/etc/fstab" <<FSTAB
UUID=5f7e9c1a-0d3b-4c6e-9a2f-706f72746965 / ext4 errors=remount-ro 0 1
FSTAB

# BIOS boot: grub's core image, with what it needs to read the GPT and the ext4 root; the rest
# of grub's modules and grub.cfg come from /boot/grub on the root (build.sh writes the core
# image into the BIOS boot partition and boot.img into the MBR).
mkdir -p "$root/boot/grub"
ln -sfn /usr/lib/grub/i386-pc "$root/boot/grub/i386-pc"
inroot grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -p '(,gpt2)/boot/grub' \
  -o /boot/grub/core.img biosdisk part_gpt ext2

install -D -m 0644 "$src/docs/IMAGE.md" "$root/usr/share/doc/portier/IMAGE.md"
inroot update-initramfs -u -k all >/dev/null

# Every VM makes its own identity at its first boot.
echo uninitialized >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_* "$root/var/lib/systemd/random-seed"

mkdir -p "$root/usr/share/portier/image"
inroot dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort >"$root/usr/share/portier/image/packages"
version=$(inroot dpkg-query -W -f '${Version}' portier)
echo "portier appliance $version, Debian $(cat "$root/etc/debian_version"), built from commit $(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  >"$root/usr/share/portier/image/build"
