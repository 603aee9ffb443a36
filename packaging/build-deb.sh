#!/usr/bin/env bash
# Builds target/debian/portier_VERSION_ARCH.deb with dpkg-deb: the binary, the systemd unit,
# the example configuration (a conffile) and the documentation.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
root=target/debian/portier_${version}_${arch}
rm -rf "$root"
install -D -m 0755 target/release/portier "$root/usr/bin/portier"
strip "$root/usr/bin/portier" 2>/dev/null || true
install -D -m 0644 systemd/portier.service "$root/lib/systemd/system/portier.service"
install -D -m 0644 packaging/sysctl/60-portier.conf "$root/usr/lib/sysctl.d/60-portier.conf"
install -D -m 0644 configs/portier.toml "$root/etc/portier/portier.toml"
install -D -m 0644 README.md "$root/usr/share/doc/portier/README.md"
install -D -m 0644 docs/ARCHITECTURE.md "$root/usr/share/doc/portier/ARCHITECTURE.md"
mkdir -p "$root/DEBIAN"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" packaging/debian/control > "$root/DEBIAN/control"
install -m 0644 packaging/debian/conffiles "$root/DEBIAN/conffiles"
install -m 0755 packaging/debian/postinst packaging/debian/prerm "$root/DEBIAN/"
dpkg-deb --root-owner-group --build "$root" >/dev/null
echo "$root.deb"
