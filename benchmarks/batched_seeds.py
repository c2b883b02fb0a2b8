"""Batched seeds (`grokking train --batch-seeds N`) on this machine: wall time, ms/step and peak memory.

    .venv/bin/python benchmarks/batched_seeds.py [--seeds 8] [--quick-steps 3500] [--steps 20]

1. `quick`, whole runs (evaluation and checkpoints included): N seeds batched against one solo run,
   in fp32 and bf16. Target: the batched run takes at most 3x the solo run's wall time.
2. `nanda-p113`, ms/step over `--steps` steps: N seeds batched against one solo step, fp32 and bf16, and
   the batched process's peak resident memory after the steps, one evaluation and one checkpoint
   (target: under 8 GB for 8 seeds).
3. `qf-cpu` (a language model), ms/step over `--steps` steps, N seeds batched against one solo step.

Every measurement runs in a child process of its own, so each peak RSS belongs to one measurement.
Timings on a shared machine are inflated: the script prints `uptime` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from grokking.batched import BatchedTrainer, open_batch, train_batched
from grokking.config import RunConfig
from grokking.experiments.grid import run_config
from grokking.store import RunDir
from grokking.train import Trainer, train


def config(preset: str, precision: str, steps: int | None = None) -> RunConfig:
    """The preset in `precision`, built as a sweep builds a run's config."""
    return run_config(preset, {"precision": precision}, {}, steps)


def child(kind: str, preset: str, seeds: int, precision: str, steps: int) -> dict[str, float]:
    """One measurement: a whole run (`run`) or ms/step (`steps`), solo when `seeds` is 0."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [Path(tmp) / f"seed{s}" for s in range(max(1, seeds))]
        start = time.perf_counter()
        if kind == "run":
            if seeds:
                train_batched(config(preset, precision, steps), list(range(seeds)), outs, progress=False)
            else:
                train(config(preset, precision, steps), outs[0], progress=False)
            return {"seconds": time.perf_counter() - start, "rss_mb": peak_rss_mb()}
        loop: Trainer | BatchedTrainer | None
        if seeds:
            loop = open_batch(config(preset, precision), list(range(seeds)), outs)[1]
        else:
            loop = Trainer(config(preset, precision), RunDir(outs[0]), torch.device("cpu"))
            outs[0].mkdir()
        assert loop is not None
        for i in range(3 + steps):
            if i == 3:
                start = time.perf_counter()
            loop.update(loop.step_loss()[0])
        ms = (time.perf_counter() - start) / steps * 1000
        loop.record(None)  # evaluation and checkpoint memory counts towards the peak
        loop.checkpoint()
        return {"ms": ms, "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(*args: object) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--quick-steps", type=int, default=3500, help="steps of the whole `quick` runs (the preset's own: 3500)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of the ms/step measurements")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, preset, seeds, precision, steps = args.child
        print(json.dumps(child(kind, preset, int(seeds), precision, int(steps))))
        return
    n = args.seeds
    print(f"{os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} threads; load: {os.getloadavg()}", flush=True)
    print(f"\nquick, whole runs of {args.quick_steps} steps (evaluation and checkpoints included)")
    for precision in ("fp32", "bf16"):
        solo = measure("run", "quick", 0, precision, args.quick_steps)
        batched = measure("run", "quick", n, precision, args.quick_steps)
        print(
            f"  {precision}: one seed {solo['seconds']:.0f} s; {n} seeds batched {batched['seconds']:.0f} s "
            f"= {batched['seconds'] / solo['seconds']:.2f}x one seed (target <= 3x), peak RSS {batched['rss_mb']:.0f} MB",
            flush=True,
        )
    for preset in ("nanda-p113", "qf-cpu"):
        print(f"\n{preset}, ms/step over {args.steps} steps")
        for precision in ("fp32", "bf16"):
            solo = measure("steps", preset, 0, precision, args.steps)
            batched = measure("steps", preset, n, precision, args.steps)
            print(
                f"  {precision}: one seed {solo['ms']:.0f} ms/step (peak RSS {solo['rss_mb']:.0f} MB); {n} seeds batched "
                f"{batched['ms']:.0f} ms/step = {batched['ms'] / n:.0f} ms per seed-step, {batched['ms'] / solo['ms']:.2f}x "
                f"one seed's step (peak RSS {batched['rss_mb']:.0f} MB)",
                flush=True,
            )
    print(f"\nload after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
