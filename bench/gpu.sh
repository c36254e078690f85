#!/usr/bin/env bash
# The GPU part of the benchmark suite, in one go: bench/gpu.sh OUTDIR
#
# Writes OUTDIR/{env.txt,model.json,preprocess.json,model.log,preprocess.log}. On a machine without CUDA
# it runs the same scripts with the GPU rows skipped (each JSON says why), so it can be tried on a CPU.
# Sized to finish within a few minutes on an H100/H200: inductor's default kernels with CUDA graphs
# (set ECGCAD_GPU_AUTOTUNE=1 for max-autotune: ~5 minutes of compiling per batch size, cold).
# Compiled artefacts are cached under OUTDIR/inductor-cache (reused by a second run).
set -euo pipefail
out=${1:?usage: bench/gpu.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "nvidia-smi: not available"
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
gpu_only=()
if "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  gpu_only=(--gpu-only)
fi
autotune=()
[ "${ECGCAD_GPU_AUTOTUNE:-0}" = 1 ] && autotune=(--autotune)
timeout "${ECGCAD_GPU_BENCH_TIMEOUT:-420}" "$py" bench/bench_model.py "${gpu_only[@]}" "${autotune[@]}" \
  --quick --repeats 10 --out "$out" --cache-dir "$out/inductor-cache" 2>&1 | tee "$out/model.log"
timeout 120 "$py" bench/bench_preprocess.py --quick "${gpu_only[@]}" --out "$out" 2>&1 | tee "$out/preprocess.log"
rm -rf "$out/inductor-cache"
echo "results in $out"
