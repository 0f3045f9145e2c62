#!/usr/bin/env bash
# Train the built-in default model and, side by side on the same device, its ablation variants:
# the encoder stage once, then score matching and the quality stage for each parametrization named.
# Each stage stops at its time limit (train.minutes in the config).
#
#   bash configs/train_default_x4.sh DATA OUT [PARAM ...]   # PARAM: hybrid (default), eps, x0
#
# OUT/encoder: the L1-pretrained encoder; OUT/<param>-score/model: score matching only;
# OUT/<param>/model: after the quality stage (OUT/hybrid/model is the default model); OUT/*.log.
# CONFIG=FILE replaces configs/default_x4.yaml (configs/small_x4.yaml: the small model, one GPU call);
# SET="KEY=VALUE ..." is added to every stage's --set. Without an installed ecdp command (a bare GPU
# machine), the package runs from this checkout (python3 -m ecdp with the checkout on PYTHONPATH).
set -euo pipefail
data=$1 out=$2
shift 2
params=("${@:-hybrid}")
root=$(cd "$(dirname "$0")/.." && pwd)
config=${CONFIG:-$root/configs/default_x4.yaml}
mkdir -p "$out"
if ! command -v ecdp > /dev/null; then
    export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
    ecdp() { python3 -m ecdp "$@"; }
fi

train() {  # train NAME ARGS...: one ecdp train run into OUT/NAME, its output in OUT/NAME.log
    local name=$1
    shift
    # shellcheck disable=SC2086  # SET is split into its KEY=VALUE words
    ecdp train --config "$config" --data "$data" --out "$out/$name" "$@" ${SET:+--set $SET} > "$out/$name.log" 2>&1 ||
        { echo "stage $name failed; the end of $out/$name.log:" >&2; tail -n 20 "$out/$name.log" >&2; return 1; }
}

side_by_side() {  # side_by_side STAGE: the stage for every parametrization at once; fails if one fails
    local pids=() param
    for param in "${params[@]}"; do
        if [[ $1 == score ]]; then
            train "$param-score" --set model.param="$param" train.init_encoder="$out/encoder" &
        else
            train "$param" --stage quality --set model.param="$param" train.init="$out/$param-score/model" &
        fi
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
}

train encoder --stage encoder
side_by_side score
side_by_side quality
