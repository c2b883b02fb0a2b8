"""What `grokking/allocator.py` saves: page faults, kernel time and ms/step, with and without it.

    .venv/bin/python benchmarks/allocator_effect.py [--preset nanda-p113] [--precision bf16] [--pairs 5] [--steps 100]

Each measurement is a fresh process (glibc's settings are per process), alternating without/with so that
slow spells of the host hit both sides; the median and the fastest of each side are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = """
import json, resource, sys, tempfile, time, torch
import grokking.train
if sys.argv[1] == "without":
    grokking.train.keep_freed_memory = lambda: False
from grokking.experiments.grid import run_config
from grokking.store import RunDir
preset, precision, steps = sys.argv[2], sys.argv[3], int(sys.argv[4])
trainer = grokking.train.Trainer(run_config(preset, {"precision": precision}, {}, None), RunDir(tempfile.mkdtemp()), torch.device("cpu"))
for _ in range(10):
    trainer.update(trainer.step_loss()[0])
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    trainer.update(trainer.step_loss()[0])
wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": wall / steps * 1000, "sys_ms": (after.ru_stime - before.ru_stime) / steps * 1000,
                  "faults": (after.ru_minflt - before.ru_minflt) / steps}))
"""


def measure(mode: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, "-c", CHILD, mode, args.preset, args.precision, str(args.steps)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nanda-p113")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"without": [], "with": []}
    for _ in range(args.pairs):
        for mode in rows:
            rows[mode].append(measure(mode, args))
    print(f"{args.preset} {args.precision}, {args.pairs} alternating pairs of {args.steps} steps")
    print(f"{'allocator setting':<20}{'median ms/step':>16}{'fastest':>10}{'kernel ms/step':>16}{'page faults/step':>18}")
    for mode, runs in rows.items():
        ms = [r["ms"] for r in runs]
        print(
            f"{mode:<20}{statistics.median(ms):>16.1f}{min(ms):>10.1f}"
            f"{statistics.median(r['sys_ms'] for r in runs):>16.2f}{statistics.median(r['faults'] for r in runs):>18.0f}"
        )


if __name__ == "__main__":
    main()
