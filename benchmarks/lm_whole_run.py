"""A whole language-model run's wall time with the lab's step, or with the step before `fast_lm.py`.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lm_whole_run.py {fast,exact-rows,hooked} -- train qf-cpu --seed 4 --out DIR

Everything after `--` is a `grokking` command line, run in this process. `fast` runs it as the lab
does. `exact-rows` sets `fast_lm.ROW_BLOCK` to 1, so each training step computes on exactly its real
positions, a row count that changes with every batch (the lab's step before its rows were rounded up).
`hooked` makes `fast_lm.supports_fast_lm` answer False, so training and evaluation take the
hooked forward over the batch padded to its longest row: the lab's step and evaluation before
issue 18, on the same data, sampler, checkpoints and code otherwise. Start two side by side,
one per core, to compare them under the same load; each prints its wall and CPU time at the end.
"""

from __future__ import annotations

import argparse
import sys
import time

from grokking import cli, fast_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", choices=["fast", "exact-rows", "hooked"], help="which training step the run uses")
    parser.add_argument("grokking_args", nargs=argparse.REMAINDER, help="-- then a grokking command line")
    args = parser.parse_args()
    grokking_args = args.grokking_args[1:] if args.grokking_args[:1] == ["--"] else args.grokking_args
    if not grokking_args:
        parser.error("give a grokking command line after --, e.g. -- train qf-cpu --seed 4 --out DIR")
    if args.path == "hooked":
        fast_lm.supports_fast_lm = lambda model: False
    if args.path == "exact-rows":
        fast_lm.ROW_BLOCK = 1
    sys.argv = ["grokking", *grokking_args]
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        cli.main()
    except SystemExit as stop:
        if stop.code:
            raise
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{args.path}: grokking {' '.join(grokking_args)}: wall {wall / 60:.1f} min, CPU {cpu / 60:.1f} min")


if __name__ == "__main__":
    main()
