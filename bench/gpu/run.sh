#!/usr/bin/env bash
# The device command: correctness, kernels and end-to-end timings on one GPU, in at most 8 minutes.
#
#     bash bench/gpu/run.sh OUT [--quick]
#
# Writes OUT/report.json, OUT/report.md and OUT/log.txt. Needs python3 with torch, triton,
# torchdiffeq, safetensors, pillow, pyyaml, scikit-image and pytest, and nothing installed: the
# package is made importable by bench/gpu/site.sh. --quick runs the same code on the CPU at tiny
# sizes in seconds (a rehearsal; .ci/run runs it).
set -uo pipefail
out=${1:?usage: bash bench/gpu/run.sh OUT [--quick]}
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
source "$root/bench/gpu/site.sh" "$root"
cd "$root"
export PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
python3 -m bench.gpu.device "$out" "$@" 2>&1 | tee "$out/log.txt"
