"""Wall-clock time of `grokking analyze` on a finished run (default: the 250-checkpoint nanda-p113 run).

    .venv/bin/python benchmarks/analyze_speed.py [RUN_DIR]

The run is copied to a temporary directory without its analysis files, so the whole analysis runs
from scratch (key frequencies, every checkpoint, phases, maps), then a second, incremental pass.
Train one first with `grokking train nanda-p113` if RUN_DIR does not exist.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from grokking.analysis.progress import analyze
from grokking.store import DERIVED_FILES


def main() -> None:
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "checkpoints/nanda-p113-seed0")
    if not (source / "checkpoints").is_dir():
        sys.exit(f"no run at {source}; train one with `grokking train nanda-p113` first")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(source, run, ignore=shutil.ignore_patterns(*DERIVED_FILES))
        n = len(list((run / "checkpoints").glob("step_*.safetensors")))
        start = time.perf_counter()
        analyze(run, progress=False)
        full = time.perf_counter() - start
        start = time.perf_counter()
        analyze(run, progress=False)
        again = time.perf_counter() - start
    print(f"{source}: {n} checkpoints, {torch.get_num_threads()} threads")
    print(f"full analysis:        {full:6.1f} s ({full / n * 1000:.0f} ms per checkpoint)")
    print(f"re-run (nothing new): {again:6.1f} s")


if __name__ == "__main__":
    main()
