#!/usr/bin/env bash
# Checks the Helm chart: installs helm when missing, lints the chart and renders it over every
# value set in tests/chart/, then runs the Rust checks of the rendered objects (tests/chart.rs),
# which also fail when deploy/sidecar-injector.yaml drifts from the chart.
#
# Usage: scripts/check-chart.sh            # check
#        scripts/check-chart.sh --update   # regenerate deploy/sidecar-injector.yaml, then check
# The rendered manifests are left in $CHART_RENDER_DIR (default: a temporary directory) for review.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

HELM="$(scripts/install-helm.sh)"
export HELM
echo "using helm: $HELM ($("$HELM" version --short))"

render_dir="${CHART_RENDER_DIR:-$(mktemp -d)}"
mkdir -p "$render_dir"

chart=charts/sidecar-injector
for values in tests/chart/*.yaml; do
    set_name="$(basename "$values" .yaml)"
    echo "== $set_name"
    "$HELM" lint --strict "$chart" -f "$values" >/dev/null
    "$HELM" template sidecar-injector "$chart" --namespace sidecar-injector -f "$values" \
        >"$render_dir/$set_name.yaml"
done
echo "rendered value sets into $render_dir"

if [[ "${1:-}" == "--update" ]]; then
    UPDATE_DEPLOY=1 cargo test --test chart deploy_manifest
fi
cargo test --test chart
