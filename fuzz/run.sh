#!/usr/bin/env bash
# Runs every fuzz target in turn for SECONDS each (default 300), one at a time, with the
# hand-written seeds where a target has them. Corpora grow in fuzz/corpus/<target>, crashes land
# in fuzz/artifacts/<target>; neither is committed. Needs cargo-fuzz; RUSTC_BOOTSTRAP lets the
# stable compiler take the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
seconds="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(annotations yaml_rendered engine replicas admission_review)
fi
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target"
    dirs=("corpus/$target")
    [ -d "seeds/$target" ] && dirs+=("seeds/$target")
    # replicas reads the same generated pods as engine: start from engine's seeds and corpus.
    [ "$target" = replicas ] && dirs+=("seeds/engine") && [ -d corpus/engine ] && dirs+=("corpus/engine")
    extra=()
    # Deeply indented YAML needs long inputs; the other targets do well with libFuzzer's default.
    [ "$target" = yaml_rendered ] && extra+=("-max_len=32768")
    # Each engine input is a whole pod: start from full-size inputs rather than growing them
    # from a few bytes, which takes most of a short run at the engine's speed.
    case "$target" in engine | replicas) extra+=("-len_control=0" "-max_len=2048") ;; esac
    [ -f "dict/$target.dict" ] && extra+=("-dict=dict/$target.dict")
    echo "== $target for ${seconds}s"
    cargo fuzz run "$target" "${dirs[@]}" -- -max_total_time="$seconds" \
        -print_final_stats=1 "${extra[@]}"
done
