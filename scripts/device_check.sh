#!/usr/bin/env bash
# The one prepared GPU run (issues 20 and 21): everything a lent GPU machine should measure, in one call, writing
# JSON and logs under $OUT. Run through the device tool from the repository root:
#     bash scripts/device_check.sh            # under 8 minutes on one H200; OUT defaults to ./device_out
# The device machine has torch/transformers/accelerate but no network: vlens runs from src/ (PYTHONPATH), and
# each step is bounded and independent (one failing does not stop the rest).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device_out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 VLENS_PROGRESS=0
PY=${PYTHON:-python3}
{ nvidia-smi; $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'transformers', transformers.__version__)"; } > "$OUT/machine.txt" 2>&1
# 1. GPU tests, real-size throughput of the three model families, and the checkpoint converters against timm's
#    and open_clip's own forward where they import (scripts/gpu_check.py, its own budget)
timeout 300 $PY scripts/gpu_check.py --out "$OUT/gpu_check.json" > "$OUT/gpu_check.log" 2>&1
echo "gpu_check rc=$?" >> "$OUT/summary.txt"
# 2. vlens vs the plain Hugging Face call on the GPU (same inputs, alternating)
timeout 180 $PY benchmarks/bench_peers.py --device cuda --conditions idle --repeats 3 \
  --json "$OUT/peers_cuda.json" > "$OUT/peers_cuda.log" 2>&1
echo "bench_peers cuda rc=$?" >> "$OUT/summary.txt"
cat "$OUT/summary.txt"; tail -n 12 "$OUT/peers_cuda.log"
