#!/usr/bin/env bash
# portier against Debian's HAProxy 2.6, fully transparent, in the namespace lab
# (benches/compare.rs): L4 throughput, HTTP/HTTPS requests/s and latency, TLS handshakes,
# memory with idle connections; and the SIP rows against Kamailio 5.6 with sipp (calls/s,
# REGISTER with digest/s). Prints one table and writes it to docs/PERFORMANCE.md.
# Knobs (environment): BENCH_ROUNDS, BENCH_SECS, BENCH_THREADS, BENCH_HOLD, BENCH_DOC,
# BENCH_SCENARIOS, BENCH_KEEP and the BENCH_SIP_* ones (see the top of benches/compare.rs and
# its `sip` module, benches/sip/mod.rs). About 15 minutes with the defaults (the SIP part about 4).
# Only some rows, without touching docs/PERFORMANCE.md:
#   BENCH_SCENARIOS=sip BENCH_DOC=0 sudo -E ./scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh

# The comparison's own tools (not needed by the tests, so not in deps.sh).
missing=()
# sip-tester is Debian's sipp; kamailio and rtpengine-daemon run as the references of the SIP
# and media rows (the packages' own services are not needed: the harness starts them in the lab).
for p in haproxy wrk iperf3 openssl sip-tester kamailio rtpengine-daemon; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --release --quiet
exec cargo bench --bench compare "$@"
