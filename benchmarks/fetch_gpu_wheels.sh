#!/usr/bin/env bash
# Download, here, the Python wheels that the lent GPU machine lacks, into .gpu-wheels/ (git-ignored).
#
# Why: the GPU machine reaches no package registry. Its image has torch, einops, typer, safetensors,
# pandas, transformers, huggingface-hub, jaxtyping, pyarrow, xxhash and fsspec, but not transformer-lens
# (which `grokking.model` imports), the parts of transformer-lens's import chain it misses (datasets,
# dill, multiprocess) or plotly (reports; with its narwhals, since the image's own version is not known and
# tests/test_cuda.py imports the reports through the CPU tests it reuses). The device's python3 is CPython
# 3.12 on x86-64, so the wheels
# are fetched for that interpreter whatever runs this script. Only what an import needs is fetched:
# transformer-lens's other requirements (wandb, beartype, typeguard, fancy-einsum,
# transformers-stream-generator) are not imported by `import transformer_lens`.
# benchmarks/gpu_check.sh installs them there with --no-deps into a temporary folder.
#
#   bash benchmarks/fetch_gpu_wheels.sh        then carry .gpu-wheels in the device call
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu-wheels
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# Versions as installed in this lab's venv, so the device runs what the CPU suite tests.
WHEELS=(transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 plotly==7.1.0 narwhals==2.29.0)
mkdir -p "$DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$DEST" "${WHEELS[@]}"
ls -l "$DEST"
du -sh "$DEST"
