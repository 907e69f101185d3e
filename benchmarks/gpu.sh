#!/usr/bin/env bash
# GPU benchmark of the generation paths and of capture, on a randomly initialised
# Llama-3.2-1B-shaped model (bf16): no weights are downloaded.
#
#   bash benchmarks/gpu.sh                 # on a CUDA machine with torch, transformers,
#                                          # transformer-lens and this package importable
#   bash benchmarks/gpu.sh --tiny --device cpu   # a smoke run anywhere
#
# Results: $OUT/gpu.json when OUT is set, else benchmarks/results/gpu.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON_SET:-}" ]; then PYTHON=.venv/bin/python; fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec "$PYTHON" benchmarks/gpu_bench.py "$@"
