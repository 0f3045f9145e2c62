#!/usr/bin/env bash
# The device command: correctness, kernels and end-to-end timings on one GPU, in at most 8 minutes.
#
#     bash bench/gpu/run.sh OUT [--quick]
#
# Writes OUT/report.json, OUT/report.md and OUT/log.txt. Needs python3 with torch, triton,
# torchdiffeq, safetensors, pillow, pyyaml, scikit-image and pytest, and nothing installed: the
# package is made importable as setup.py maps it (ecdp.kernels is kernels/, ecdp.export is
# export/), from a folder of links on PYTHONPATH. --quick runs the same code on the CPU at tiny
# sizes in seconds (a rehearsal; .ci/run runs it).
set -uo pipefail
out=${1:?usage: bash bench/gpu/run.sh OUT [--quick]}
shift
root=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
mkdir "$site/ecdp"
for entry in "$root"/ecdp/*; do ln -s "$entry" "$site/ecdp/"; done
ln -s "$root/kernels" "$site/ecdp/kernels"
ln -s "$root/export" "$site/ecdp/export"
cd "$root"
export PYTHONPATH="$site:$root" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
python3 -m bench.gpu.device "$out" "$@" 2>&1 | tee "$out/log.txt"
