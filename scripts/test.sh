#!/usr/bin/env bash
# The whole test suite: unit, loopback integration and namespace lab tests (root), the
# formatting and lint gates, and the appliance image's boot tests. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Lab tests start real portier processes in namespaces; the bounded count keeps two cores busy
# without starving the health-check timing tests. --tests: unit and integration tests (the
# crate has no doc tests).
log=$(mktemp)
image_log=$(mktemp)
trap 'rm -f "$log" "$image_log"' EXIT
set +e
cargo test --tests -- --test-threads 4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The appliance image: built from this tree and booted under qemu (packaging/image/test.sh).
# After the cargo tests, so the two never share the CPU.
./packaging/image/test.sh 2>&1 | tee "$image_log"
image_status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
passed=$((passed + $(grep -c '^ok ' "$image_log" || true)))
failed=$((failed + $(grep -c '^FAIL ' "$image_log" || true)))
echo
echo "total: $passed passed, $failed failed"
[ "$status" -eq 0 ] || exit "$status"
exit "$image_status"
