#!/usr/bin/env bash
# Boot tests of the appliance image under qemu (TCG: this machine's /dev/kvm runs no guest).
#   sudo ./packaging/image/test.sh [--no-build] [--out DIR]
# 1. builds the image (unless --no-build and it is there), then again from the same .deb: the
#    two must be the same disk;
# 2. boots the qcow2 through OVMF with Secure Boot (Microsoft keys enrolled) and a seed disk
#    labelled PORTIER: portier's admin listener answers through a port forwarded to 127.0.0.1,
#    `portier doctor` passes, Secure Boot is on, SSH takes the seeded key and refuses passwords;
# 3. boots it through BIOS (SeaBIOS: grub's boot.img and core image) in a 128 MB guest and
#    runs `portier lab` in it: every backend must see its client's address; the guest's memory
#    is sampled throughout;
# 4. converts the VHDX back to qcow2 and boots it through OVMF with Secure Boot and a seed
#    whose configuration `portier check` refuses: the image's own stays and portier runs.
# Prints one "ok"/"FAIL" line per check, the figures, and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=target/image
build=yes
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=no; shift ;;
    --out) out=$2; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "test.sh: must run as root (the image build needs it)" >&2; exit 1; }
./packaging/image/deps.sh

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
image=$out/portier-$version
if [ "$build" = yes ] || [ ! -f "$image.qcow2" ]; then
  started=$(date +%s)
  ./packaging/image/build.sh --out "$out"
  echo "figure: image build $(($(date +%s) - started)) s (including the release build and the .deb)"
fi
echo "figure: qcow2 $(du -m "$image.qcow2" | cut -f1) MiB, vhdx $(du -m "$image.vhdx" | cut -f1) MiB (allocated)"

work=$(mktemp -d /tmp/portier-image-test.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

failures=0
ok() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }
check() { # check NAME COMMAND...: one line per check
  local name=$1; shift
  if "$@"; then ok "$name"; else fail "$name"; return 1; fi
}

# A free port on 127.0.0.1 for each forward (several suites may run on one machine).
free_port() {
  local p
  while :; do
    p=$(shuf -i 20000-60000 -n 1)
    ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
  done
}

# Reproducible: a second build from the same commit and the same .deb gives the same disk.
if [ "$build" = yes ]; then
  ./packaging/image/build.sh --deb "target/debian/portier_${version}_amd64.deb" --out "$work/again" >"$work/again.log" 2>&1 ||
    { cat "$work/again.log"; fail "a second build runs"; }
  if cmp -s "$image.packages" "$work/again/portier-$version.packages"; then
    check "reproducible: a second build gives the same qcow2 (sha256)" \
      cmp -s "$image.qcow2" "$work/again/portier-$version.qcow2" || true
    # qemu-img gives each VHDX file random header GUIDs; the disk inside must be the same.
    check "reproducible: a second build gives the same disk in the VHDX" \
      qemu-img compare -q -f vhdx -F vhdx "$image.vhdx" "$work/again/portier-$version.vhdx" || true
  else
    fail "reproducible: the mirror changed packages between the two builds"
  fi
  rm -rf "$work/again"
fi

# The seed disk: a FAT file system labelled PORTIER, written with mtools (no loop device).
ssh-keygen -q -t ed25519 -N '' -f "$work/id" -C portier-image-test
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
sed -e 's/^listen = "127.0.0.1:9090".*/listen = "0.0.0.0:9090"\ntoken = "'"$token"'"/' \
  configs/portier.toml >"$work/portier.toml"
grep -q "^token = " "$work/portier.toml" || { echo "test.sh: the example's [admin] listen line changed" >&2; exit 1; }
mkfs.vfat -C -n PORTIER "$work/seed.img" 4096 >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -i "$work/seed.img" "$work/portier.toml" ::/portier.toml
MTOOLS_SKIP_CHECK=1 mcopy -i "$work/seed.img" "$work/id.pub" ::/authorized_keys
echo portier-test >"$work/hostname"
MTOOLS_SKIP_CHECK=1 mcopy -i "$work/seed.img" "$work/hostname" ::/hostname
# A second seed whose configuration portier check refuses (an unknown field): the image's own
# configuration must stay in place and portier must run with it.
cp "$work/seed.img" "$work/bad-seed.img"
sed 's/^token = .*/&\ncolour = "blue"/' "$work/portier.toml" >"$work/bad.toml"
MTOOLS_SKIP_CHECK=1 mcopy -o -i "$work/bad-seed.img" "$work/bad.toml" ::/portier.toml

ssh_opts=(-i "$work/id" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  -o LogLevel=ERROR -o ConnectTimeout=10)
in_guest() { local port=$1; shift; ssh "${ssh_opts[@]}" -p "$port" root@127.0.0.1 "$@"; }

# boot NAME DISK MEMORY_MB MODE: starts a guest in the background; MODE is "uefi" (OVMF with
# Secure Boot and Microsoft's keys) or "bios" (SeaBIOS, qemu's default firmware, as KVM's
# virt-install and Hyper-V Generation 1 boot). Sets admin_port, ssh_port, serial.
boot() {
  local name=$1 disk=$2 mem=$3 mode=$4
  admin_port=$(free_port)
  ssh_port=$(free_port)
  serial=$work/$name.serial
  local args=(-accel tcg -smp 1 -m "$mem" -nographic -no-reboot -monitor none -serial "file:$serial"
    -drive "file=$disk,if=virtio,format=qcow2"
    -drive "file=${seed:-$work/seed.img},if=virtio,format=raw,readonly=on"
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$admin_port-:9090,hostfwd=tcp:127.0.0.1:$ssh_port-:22"
    -device virtio-net-pci,netdev=n0)
  case "$mode" in
    uefi)
      cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd "$work/$name.vars"
      args+=(-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on
        -drive if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd,readonly=on
        -drive "if=pflash,format=raw,unit=1,file=$work/$name.vars")
      ;;
    bios)
      args+=(-machine q35)
      ;;
  esac
  qemu-system-x86_64 "${args[@]}" </dev/null >"$work/$name.qemu" 2>&1 &
  pids+=($!)
  boot_started=$(date +%s)
}

# Waits until the admin listener answers /metrics with portier's own series.
wait_ready() {
  local name=$1 limit=$2
  while [ $(($(date +%s) - boot_started)) -lt "$limit" ]; do
    if curl -fsS --max-time 5 -H "Authorization: Bearer $token" "http://127.0.0.1:$admin_port/metrics" 2>/dev/null |
      grep -q '^portier_'; then
      echo "figure: $name: portier ready $(($(date +%s) - boot_started)) s after qemu started"
      return 0
    fi
    sleep 2
  done
  echo "--- $name serial console (last 40 lines)"
  tail -n 40 "$serial" || true
  return 1
}
# The same, from inside the guest (a configuration whose admin listener is on loopback).
wait_ready_inside() {
  local name=$1 limit=$(($(date +%s) + $2))
  while [ "$(date +%s)" -lt $limit ]; do
    if in_guest "$ssh_port" "curl -fsS --max-time 5 http://127.0.0.1:9090/metrics | grep -q '^portier_'"; then
      echo "figure: $name: portier ready $(($(date +%s) - boot_started)) s after qemu started"
      return 0
    fi
    sleep 2
  done
  return 1
}
# SSH answering within LIMIT seconds of qemu's start.
wait_ssh_boot() {
  local name=$1 limit=$2
  while [ $(($(date +%s) - boot_started)) -lt "$limit" ]; do
    in_guest "$ssh_port" true 2>/dev/null && return 0
    sleep 2
  done
  echo "--- $name serial console (last 40 lines)"
  tail -n 40 "$serial" || true
  return 1
}
wait_ssh() {
  local limit=$(($(date +%s) + 60))
  while [ "$(date +%s)" -lt $limit ]; do
    in_guest "$ssh_port" true 2>/dev/null && return 0
    sleep 2
  done
  return 1
}
stop_guest() { in_guest "$ssh_port" systemctl poweroff >/dev/null 2>&1 || true; sleep 5; kill "${pids[-1]}" 2>/dev/null || true; }

guest_checks() { # the checks every booted image passes
  local name=$1
  check "$name: SSH with the key from the seed disk" wait_ssh || return 1
  check "$name: portier doctor passes in the guest" \
    in_guest "$ssh_port" portier doctor --config /etc/portier/portier.toml
  check "$name: the seed's portier.toml is installed" \
    in_guest "$ssh_port" "grep -q '^token = \"$token\"' /etc/portier/portier.toml"
  check "$name: the seed's host name is set" test "$(in_guest "$ssh_port" hostname)" = portier-test
  local failed
  failed=$(in_guest "$ssh_port" systemctl --failed --no-legend --plain) || failed="(systemctl failed)"
  check "$name: no failed unit ${failed:+(failed: $failed)}" test -z "$failed"
  check "$name: portier runs as the portier user" \
    test "$(in_guest "$ssh_port" ps -o user= -C portier | head -n1)" = portier
  # A password is never asked for: the server offers public keys only.
  local methods
  methods=$(ssh -v -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
    -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive \
    -p "$ssh_port" root@127.0.0.1 true 2>&1 | sed -n 's/.*Authentications that can continue: //p' | head -n1 | tr -d '\r ')
  check "$name: SSH offers no password login (offered: $methods)" test "$methods" = publickey
}

secure_boot_on() { # the kernel's own report of the firmware's Secure Boot state
  in_guest "$ssh_port" "dmesg | grep -q 'secureboot: Secure boot enabled'"
}

shipped_config_in_place() { in_guest "$ssh_port" cat /etc/portier/portier.toml | cmp -s - configs/portier.toml; }
refusal_on_console() { grep -q "refused by portier check" "$serial" && grep -q "colour" "$serial"; }

memory_used_mb() { # what the guest uses: MemTotal - MemAvailable
  in_guest "$ssh_port" "awk '/^MemTotal/ {t=\$2} /^MemAvailable/ {a=\$2} END {print int((t-a)/1024)}' /proc/meminfo"
}

# From here every step is a check that reports and goes on; a failed check returns 1.
set +e

# run_lab NAME: runs `portier lab` in the guest while sampling the memory the guest uses
# every 200 ms (MemTotal - MemAvailable); reports the peak.
run_lab() {
  local name=$1
  in_guest "$ssh_port" 'nohup sh -c "while :; do awk '"'"'/^MemTotal/ {t=\$2} /^MemAvailable/ {a=\$2} END {print int((t-a)/1024)}'"'"' /proc/meminfo; sleep 0.2; done" >/run/mem.samples 2>&1 & echo $! >/run/mem.pid'
  if in_guest "$ssh_port" portier lab --duration 2s >"$work/lab.out" 2>&1; then
    ok "$name: portier lab passes in the guest"
  else
    fail "$name: portier lab passes in the guest"
    cat "$work/lab.out"
  fi
  in_guest "$ssh_port" 'kill $(cat /run/mem.pid)' || true
  # One row per client and port: client, dialled, backend, peer seen, transparent.
  local rows
  rows=$(grep -cE '^[0-9a-f.:]+ +[][0-9a-f.:]+ +cas0[12] +[][0-9a-f.:]+ +yes$' "$work/lab.out")
  check "$name: every lab connection reached a backend that saw its client's address ($rows of 15)" \
    test "$rows" -eq 15 || cat "$work/lab.out"
  local peak
  peak=$(in_guest "$ssh_port" sort -n /run/mem.samples | tail -n1)
  echo "figure: $name guest during portier lab: peak $peak MB used"
  if in_guest "$ssh_port" "dmesg | grep -qi 'out of memory'"; then
    fail "$name: the guest's kernel reported out of memory"
  fi
}

# --- 1. the qcow2, UEFI with Secure Boot ---------------------------------------------------
qemu-img create -q -f qcow2 -b "$(realpath "$image.qcow2")" -F qcow2 "$work/qcow2.overlay"
boot qcow2 "$work/qcow2.overlay" 512 uefi
if check "qcow2: boots through OVMF (Secure Boot) to portier ready" wait_ready qcow2 300; then
  guest_checks qcow2
  check "qcow2: Secure Boot is enabled in the guest" secure_boot_on
  check "qcow2: booted through shim and grub (kernel command line from grub.cfg)" \
    in_guest "$ssh_port" grep -q "BOOT_IMAGE=/vmlinuz" /proc/cmdline
  stop_guest
fi

# --- 2. 128 MB through the BIOS boot chain: the lab demo inside the guest -------------------
qemu-img create -q -f qcow2 -b "$(realpath "$image.qcow2")" -F qcow2 "$work/small.overlay"
boot small "$work/small.overlay" 128 bios
if check "128 MB: boots through BIOS (grub's MBR and core image) to portier ready" wait_ready "128 MB" 300 &&
  check "128 MB: SSH" wait_ssh; then
  check "128 MB: booted by grub from the disk (kernel command line from grub.cfg)" \
    in_guest "$ssh_port" grep -q "BOOT_IMAGE=/vmlinuz" /proc/cmdline
  check "128 MB: the guest has at most 128 MB" \
    test "$(in_guest "$ssh_port" "awk '/^MemTotal/ {print int(\$2/1024)}' /proc/meminfo")" -le 128
  sleep 10 # let first-boot work settle before the idle figure
  echo "figure: 128 MB guest idle: $(memory_used_mb) MB used (MemTotal - MemAvailable)"
  run_lab "128 MB"
  stop_guest
fi

# --- 3. the VHDX, converted back -----------------------------------------------------------
qemu-img convert -O qcow2 "$image.vhdx" "$work/from-vhdx.qcow2"
# Booted with the seed whose configuration is refused: portier runs with the image's own (its
# admin listener on the guest's loopback), and the refusal is on the console.
seed=$work/bad-seed.img boot vhdx "$work/from-vhdx.qcow2" 512 uefi
if check "vhdx: converted back, boots through OVMF (Secure Boot) to SSH" wait_ssh_boot vhdx 300; then
  check "vhdx: portier ready with the image's configuration" wait_ready_inside vhdx 120
  check "vhdx: portier doctor passes in the guest" \
    in_guest "$ssh_port" portier doctor --config /etc/portier/portier.toml
  check "vhdx: the refused seed configuration was not installed" \
    shipped_config_in_place
  check "vhdx: the refusal names the bad field on the console" \
    refusal_on_console
  check "vhdx: Secure Boot is enabled in the guest" secure_boot_on
  stop_guest
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "image tests: $failures failed"
  exit 1
fi
echo "image tests: all passed"
