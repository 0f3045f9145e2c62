#!/usr/bin/env bash
# The device command: correctness, kernels and end-to-end timings on one GPU, in at most 8 minutes.
#
#     bash bench/gpu/run.sh OUT [--quick]
#
# Writes OUT/report.json, OUT/report.md and OUT/log.txt. Needs python3 with torch, triton,
# torchdiffeq, safetensors, pillow, pyyaml, scikit-image and pytest, and nothing installed: the
# package runs from this checkout (ecdp/__init__.py maps kernels/ and export/ into it). --quick
# runs the same code on the CPU at tiny sizes in seconds (a rehearsal; .ci/run runs it from a
# fresh copy with the project not installed).
set -uo pipefail
out=${1:?usage: bash bench/gpu/run.sh OUT [--quick]}
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
python3 -c "import ecdp.kernels, ecdp.export" || { echo "the checkout at $root does not import" >&2; exit 1; }
python3 -m bench.gpu.device "$out" "$@" 2>&1 | tee "$out/log.txt"
