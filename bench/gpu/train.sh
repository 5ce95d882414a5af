#!/usr/bin/env bash
# EAGLE-3 draft training step on a lent H100/H200: Llama-3-8B-sized draft (H 4096, 32/8 heads,
# draft vocab 32000 of 128256), random features, TTT 7, bf16 autocast, flex attention,
# sequence 2048 and 8192: tokens/s and peak GPU memory -> bench/results/train_gpu.json.
#
#   bash bench/gpu/train.sh            # on the GPU machine, from the repository root
#   bash bench/gpu/train.sh --dry-run  # tiny draft on CPU: checks the script end to end
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
test -x "$PY" || PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU visible"
OUT=bench/results/train_gpu.json
if [[ "${1:-}" == "--dry-run" ]]; then
    OUT=bench/results/train_gpu_dry.json
fi
"$PY" bench/train.py large-step --seq 2048 8192 --ttt 7 --steps 3 --output "$OUT" "$@"
cat "$OUT"
