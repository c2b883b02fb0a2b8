#!/usr/bin/env bash
# The GPU check in one command: CUDA tests, a whole nanda-p113 run, batched seeds, paper-scale presets timed.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]
#
# On a lent GPU machine (see docs/results/gpu.md for the device call): installs the wheels carried in
# .gpu-wheels/ (made here by benchmarks/fetch_gpu_wheels.sh) into a temporary folder, then runs
# benchmarks/gpu_check.py, which writes gpu_check.json, gpu_check.md and logs into DIR (default: $OUT, the
# device call's output folder). --dry-run runs the same steps on the CPU at toy sizes with this checkout's
# venv (tests/test_gpu_check_dry_run.py), so the script is tested without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=()
DEST=${OUT:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=(--dry-run); shift ;;
        --out) DEST=${2:?--out needs a folder}; shift 2 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]" >&2; exit 2 ;;
    esac
done
[ -n "$DEST" ] || { echo "error: no output folder: pass --out DIR (on the device machine \$OUT is set)" >&2; exit 2; }

if [ ${#DRY[@]} -gt 0 ]; then
    PY=${PYTHON:-.venv/bin/python}
    [ -x "$PY" ] || PY=python3
else
    PY=${PYTHON:-python3}
    if ls .gpu-wheels/*.whl >/dev/null 2>&1; then
        SITE=$(mktemp -d /tmp/gpu-site.XXXXXX)
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .gpu-wheels/*.whl \
            || { echo "error: could not install the carried wheels in .gpu-wheels" >&2; exit 1; }
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
    "$PY" -c "import transformer_lens" 2>/dev/null \
        || { echo "error: transformer_lens does not import: run bash benchmarks/fetch_gpu_wheels.sh here and carry .gpu-wheels" >&2; exit 1; }
fi

# The checkout itself is the package (the device machine has no editable install); nothing reaches a hub from there.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py --out "$DEST" "${DRY[@]}"
