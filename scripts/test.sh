#!/usr/bin/env bash
# The project's test command (the README's and CI's): formatting, lints, the Helm chart through
# the real helm, and every Rust test. Installs what it needs (helm) on a fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HELM="$(scripts/install-helm.sh)"
export HELM

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== chart: helm lint and helm template over every value set"
scripts/check-chart.sh
echo "== tests"
cargo test --all-targets --locked
