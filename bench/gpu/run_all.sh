#!/usr/bin/env bash
# The whole GPU run in one call (<= 8 minutes on one H100/H200), from the repository root:
#
#   bash bench/gpu/run_all.sh             # on the GPU machine: results under bench/results/
#   bash bench/gpu/run_all.sh --dry-run   # tiny shapes on the CPU (the suite runs this)
#
# On a machine without a package index, what is missing (datasets, gguf, accelerate, pytest; transformers
# when older than 5.18, pyproject.toml's lower bound)
# is installed from the wheels carried in bench/gpu/carry/wheels (`make gpu-carry` makes that
# folder); draftsmith itself runs from the checkout (PYTHONPATH), not installed.
# The parts and their outputs: bench/gpu/run_all.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-.venv/bin/python}"
test -x "$PY" || PY=python3
WHEELS=bench/gpu/carry/wheels
missing=()
for mod in datasets gguf accelerate pytest; do
    "$PY" -c "import $mod" 2>/dev/null || missing+=("$mod")
done
if ((${#missing[@]})); then
    if [[ -d "$WHEELS" ]]; then
        echo "installing ${missing[*]} from $WHEELS"
        "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "${missing[@]}"
    else
        echo "missing ${missing[*]} and no $WHEELS (make gpu-carry)" >&2
        exit 2
    fi
fi
if ! "$PY" -c "import sys, transformers; sys.exit(tuple(map(int, transformers.__version__.split('.')[:2])) < (5, 18))"; then
    echo "transformers $("$PY" -c 'import transformers; print(transformers.__version__)') is below 5.18 (pyproject.toml): installing the carried 5.18.0"
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "transformers==5.18.0"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU visible"
exec "$PY" bench/gpu/run_all.py "$@"
