#!/usr/bin/env bash
# Installs the Debian packages that build and boot-test the appliance image (idempotent).
# Run as root on Debian 12. The build works with Debian 12's own qemu-img: where a newer
# qemu-utils (a backport) is installed, qemu-system-x86 7.2 cannot sit beside it, so the
# bookworm qemu-utils is installed with it.
set -euo pipefail

PACKAGES=(
  mmdebstrap                 # the root file system, from Debian packages
  e2fsprogs                  # mkfs.ext4 -d, then debugfs/e2fsck: the root file system
  dosfstools mtools          # the EFI System Partition, written without a loop device
  fdisk                      # sfdisk: the GPT
  qemu-system-x86            # boot tests (TCG)
  qemu-utils                 # qemu-img: raw -> qcow2 and VHDX, and back
  ovmf                       # UEFI firmware with Secure Boot keys enrolled (OVMF_VARS_4M.ms.fd)
  openssh-client             # the boot test logs into the guest with a key
  curl
)

[ "$(id -u)" -eq 0 ] || { echo "packaging/image/deps.sh: must run as root (apt-get)" >&2; exit 1; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # qemu-system-x86 pins qemu-utils to its own version; name both so apt may downgrade a
  # backported qemu-utils rather than refuse.
  qemu=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
  extra=()
  case " ${missing[*]} " in *" qemu-system-x86 "*) extra=("qemu-utils=$qemu") ;; esac
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" "${extra[@]}"
fi

for tool in mmdebstrap mkfs.ext4 dumpe2fs debugfs e2fsck mkfs.vfat mcopy mmd sfdisk qemu-img qemu-system-x86_64 ssh ssh-keygen curl; do
  command -v "$tool" >/dev/null || { echo "packaging/image/deps.sh: $tool not found after install" >&2; exit 1; }
done
for f in /usr/share/OVMF/OVMF_CODE_4M.secboot.fd /usr/share/OVMF/OVMF_VARS_4M.ms.fd /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd; do
  [ -f "$f" ] || { echo "packaging/image/deps.sh: $f not found after install" >&2; exit 1; }
done
