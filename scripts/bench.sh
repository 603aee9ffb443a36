#!/usr/bin/env bash
# portier against Debian's HAProxy 2.6, fully transparent, in the namespace lab
# (benches/compare.rs): L4 throughput, HTTP/HTTPS requests/s and latency, TLS handshakes,
# memory with idle connections. Prints one table and writes it to docs/PERFORMANCE.md.
# Knobs (environment): BENCH_ROUNDS, BENCH_SECS, BENCH_THREADS, BENCH_HOLD, BENCH_DOC,
# BENCH_SCENARIOS (see the top of benches/compare.rs). About 10 minutes with the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh

# The comparison's own tools (not needed by the tests, so not in deps.sh).
missing=()
for p in haproxy wrk iperf3 openssl; do
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
