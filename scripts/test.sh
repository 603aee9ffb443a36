#!/usr/bin/env bash
# The whole test suite: unit, loopback integration and namespace lab tests (root), plus the
# formatting and lint gates. This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh

cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
# Lab tests start real portier processes in namespaces; the bounded count keeps two cores busy
# without starving the health-check timing tests.
cargo test --quiet -- --test-threads 4
