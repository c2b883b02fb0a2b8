"""What a sweep costs on top of its runs: 3 `quick` runs by hand vs `grokking sweep` (local and Ray).

    .venv/bin/python benchmarks/sweep_overhead.py [STEPS] [ROUNDS]    (defaults 1500 steps, >= 30 s per run here; 2 rounds)

"By hand" is what a user would type: `grokking train quick --seed S --steps STEPS` three times, each
a fresh process. A sweep is one `grokking sweep quick --seeds 3 --steps STEPS` command, in-process
(local) or as Ray tasks on a local instance the command starts and stops (`--max-parallel 1`, so the
runs are sequential there too and only the overhead differs). Every process gets OMP_NUM_THREADS=1,
the thread count of a 1-CPU Ray task. Rounds alternate the order (A B C, C B A, ...) and the fastest
of each is kept, because on a shared machine the load drifts between measurements. "fixed" is the
sweep's wall time minus its runs' own time (sweep.json `seconds`): start-up, Ray's local instance,
bookkeeping. Target: overhead <= 10% of the by-hand wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEEDS = (0, 1, 2)
GROKKING = [sys.executable, "-m", "grokking.cli"]
MODES = {
    "hand": "by hand, 3 x `grokking train`",
    "local": "grokking sweep (local, in-process)",
    "ray": "grokking sweep --executor ray --max-parallel 1",
}


def timed(args: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([*GROKKING, *args], check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(mode: str, root: Path, steps: str) -> tuple[float, float | None]:
    """(wall seconds, runs' own seconds or None) of one way of running the three runs."""
    if mode == "hand":
        return sum(timed(["train", "quick", "--seed", str(s), "--steps", steps, "--out", str(root / f"hand-{s}")]) for s in SEEDS), None
    out = root / mode
    extra = ["--executor", "ray", "--max-parallel", "1"] if mode == "ray" else []
    wall = timed(["sweep", "quick", "--seeds", str(len(SEEDS)), "--steps", steps, "--out", str(out), *extra])
    return wall, sum(r["seconds"] for r in json.loads((out / "sweep.json").read_text())["runs"])


def main() -> None:
    steps = sys.argv[1] if len(sys.argv) > 1 else "1500"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    best: dict[str, tuple[float, float | None]] = {}
    for r in range(rounds):
        for mode in list(MODES) if r % 2 == 0 else list(reversed(MODES)):
            with tempfile.TemporaryDirectory() as tmp:
                wall, own = measure(mode, Path(tmp), steps)
            print(f"round {r + 1}: {MODES[mode]:<48} {wall:7.1f} s", flush=True)
            if mode not in best or wall < best[mode][0]:
                best[mode] = (wall, own)
    hand = best["hand"][0]
    print(f"\nfastest of {rounds} rounds, 3 runs of `quick --steps {steps}`:")
    print(f"{MODES['hand']:<48} {hand:7.1f} s ({hand / len(SEEDS):.1f} s per run)")
    for mode in ("local", "ray"):
        wall, own = best[mode]
        print(f"{MODES[mode]:<48} {wall:7.1f} s  overhead {100 * (wall - hand) / hand:+5.1f}%  (fixed {wall - own:5.1f} s)")


if __name__ == "__main__":
    main()
