#!/usr/bin/env bash
# The project's test command (the README's and CI's): formatting, lints, the Helm chart through
# the real helm, and every Rust test. Installs what it needs (helm) on a fresh machine.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The drain-hook test runs the hook's script, which uses curl as the proxy image does.
if ! command -v curl >/dev/null 2>&1; then
    echo "installing curl for the drain-hook test"
    (apt-get update -qq && apt-get install -y -qq curl) >/dev/null
fi

# tests/yaml_readers.rs reads every output of `inject` with a YAML 1.1 reader (PyYAML), as
# kubectl reads YAML 1.1.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
    echo "installing PyYAML for the YAML 1.1 reading test"
    # pip for a python3 of its own (pyenv, a venv); Debian's package for the system's, which
    # refuses pip installs (PEP 668).
    if ! python3 -m pip install -q pyyaml >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq python3 python3-yaml) >/dev/null
    fi
    python3 -c 'import yaml' || { echo "PyYAML could not be installed" >&2; exit 1; }
fi

HELM="$(scripts/install-helm.sh)"
export HELM

echo "== rustfmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== chart: helm lint and helm template over every value set"
scripts/check-chart.sh
echo "== tests"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --all-targets --locked 2>&1 | tee "$log"
# One closing line for the whole run: cargo prints one per test binary, and the last binary
# (an example with no unit tests) would otherwise close the output with "0 passed".
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
