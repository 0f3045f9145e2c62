#!/usr/bin/env bash
# The GPU training call: plan, train and evaluate a model in one device call of at most 9 minutes,
# from a fresh copy of the checkout with the project not installed (as bench/gpu/run.sh runs).
#
#     bash bench/gpu/train.sh TRAIN EVAL OUT [--quick]
#
# TRAIN: the training photos; EVAL: a folder holding Set5/ and Set14/. The GPU machine receives the
# checkout only: carry them in an ignored folder of it (data/ is ignored).
# 1. The plan (bench/gpu/train_plan.py): the score step's steps/s for each candidate preset, with
#    today's settings and with train.channels_last, and the config and keys chosen from them:
#    OUT/plan.json.
# 2. configs/train_default_x4.sh with that config and those keys (hybrid): OUT/encoder,
#    OUT/hybrid-score, OUT/hybrid/model (the model folder), OUT/*.log.
# 3. ecdp eval of OUT/hybrid/model on EVAL/Set5 and EVAL/Set14 against bicubic (x4, Y, crop 4):
#    OUT/eval.txt and OUT/eval.json.
# --quick: the rehearsal on the CPU, one step per stage on tiny crops. SET="KEY=VALUE ..." is added
# to every stage's keys.
set -euo pipefail
usage="usage: bash bench/gpu/train.sh TRAIN EVAL OUT [--quick]"
train=${1:?$usage} eval=${2:?$usage} out=${3:?$usage}
shift 3
root=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
device=cuda plan=()
if [[ ${1:-} == --quick ]]; then
    device=cpu plan=(--quick)
    SET="encoder_stage.minutes=1e-9 train.minutes=1e-9 quality_stage.minutes=1e-9 train.log_every=1 train.batch=2
         data.crop=32 data.sigma_crops=4 data.workers=0 ${SET:-}"
fi
python3 -m bench.gpu.train_plan "$train" "$out" "${plan[@]}" > "$out/plan.sh"
. "$out/plan.sh"   # CONFIG, KEYS
echo "plan: $(cat "$out/plan.sh" | tr '\n' ' ')"
CONFIG=$CONFIG SET="$KEYS ${SET:-}" bash "$root/configs/train_default_x4.sh" "$train" "$out" hybrid
python3 -m ecdp eval --checkpoint "$out/hybrid/model" --data "$eval/Set5" "$eval/Set14" --device "$device" \
    --json "$out/eval.json" | tee "$out/eval.txt"
