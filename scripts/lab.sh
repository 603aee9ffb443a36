#!/usr/bin/env bash
# The lab demo: builds network namespaces (client, balancer, two backends), runs portier with
# its built-in configuration and shows that each backend sees the real client address.
# Extra arguments go to `portier lab`, e.g. --duration 30s.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release --quiet
exec ./target/release/portier lab "$@"
