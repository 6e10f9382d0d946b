#!/usr/bin/env bash
# Records what kubectl reads from tests/golden/yaml/{tricky-scalars,merge-keys}.yaml: each document as the
# JSON kubectl sends, read without a cluster (`kubectl annotate --local`). Every document's kind
# is replaced by an unknown one first, so kubectl keeps the values as it read them instead of
# decoding them into its own types (which would refuse some and add defaults).
# tests/yaml_readers.rs compares our reader with this record.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
for name in tricky-scalars merge-keys; do
    in=tests/golden/yaml/$name.yaml
    out=tests/golden/yaml/$name.kubectl.json
    sed -e 's/^apiVersion: .*/apiVersion: example.com\/v1/' -e 's/^kind: .*/kind: Tricky/' "$in" >"$tmp"
    kubectl annotate --local -o json -f "$tmp" recorded- >"$out"
done
kubectl version --client | head -1
