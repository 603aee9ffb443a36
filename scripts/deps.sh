#!/usr/bin/env bash
# Installs the Debian packages portier's build, lab and tests need (idempotent, quick when
# everything is already there). Run as root on Debian 12 or later.
set -euo pipefail

PACKAGES=(
  nftables iproute2          # the interception plumbing portier installs, and the lab
  libnftnl-dev libmnl-dev pkg-config
  curl                       # admin API checks in the lab tests
  prometheus                 # promtool, to validate /metrics
  nginx-light                # HTTP/HTTPS backends in the L7 lab tests
  nghttp2-client             # h2load, an HTTP/2 client for the L7 lab tests
  openssl                    # s_client holds a TLS connection across a certificate reload
  ca-certificates
  sip-tester                 # sipp: phones, the ISP and the Exchange UM emulator in the SIP lab tests
  baresip-core               # baresip: a real softphone in the SIP lab tests
  socat                      # TLS in front of the Exchange UM emulator (Debian's sipp has no TLS)
  procps                     # kill (stops sipp emulators cleanly) and sysctl in the lab tests
  wrk                        # HTTP load during the reload-under-load lab test
  iperf3                     # a long L4 stream during the reload-under-load lab test
)

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/deps.sh: must run as root (apt-get, network namespaces, nftables)" >&2
  exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Kernel pieces TPROXY needs; built in on some kernels, modules on others.
for m in nft_tproxy nft_socket nf_tproxy_ipv4 nf_tproxy_ipv6 veth bridge; do
  modprobe -q "$m" 2>/dev/null || true
done

for tool in nft ip curl promtool nginx h2load openssl sipp baresip socat kill sysctl ss nstat timeout wrk iperf3 cargo; do
  command -v "$tool" >/dev/null || { echo "scripts/deps.sh: $tool not found after install" >&2; exit 1; }
done
# Files the media lab tests read: sipp's RTP captures and baresip's WAV-file source.
for f in /usr/share/sip-tester/g711a.pcap /usr/share/sip-tester/dtmf_2833_1.pcap /usr/lib/baresip/modules/aufile.so; do
  [ -e "$f" ] || { echo "scripts/deps.sh: $f missing (packages sip-tester, baresip-core)" >&2; exit 1; }
done
