"""What a Grokfast gradient filter costs per training step, against the filter's own arithmetic.

    .venv/bin/python benchmarks/grad_filter_cost.py [--preset nanda-p113] [--precision fp32] [--rounds 12] [--steps 10]

For each filter (`ema`, and `ma` with the paper's window 100) one solo trainer is timed over blocks of
`--steps` full steps (forward, backward, filter, AdamW), alternating blocks with the filter called and
blocks with it switched off, on the same trainer: both see the same weights, so a trajectory effect (a
filtered run reaching tiny gradients, whose subnormal floats slow every op, sooner) does not count as
filter cost. Then the filter call alone is timed on the last gradients. Claim checked: (step with the
filter) - (step without) is about the filter call alone. Medians and quartiles (the noise) over rounds;
the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from statistics import median, quantiles

import torch

from grokking.config import assemble_config
from grokking.store import RunDir
from grokking.train import Trainer


def trainer(preset: str, precision: str, kind: str, where: Path) -> Trainer:
    cfg = assemble_config(preset, {"precision": precision, "grad_filter": kind}, device="cpu")
    return Trainer(cfg, RunDir(where / kind), torch.device("cpu"))


def ms_per_step(loop: Trainer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        loop.update(loop.step_loss()[0])
    return (time.perf_counter() - start) / steps * 1000


def ms_per_filter_call(loop: Trainer, calls: int) -> float:
    grad_filter = loop.grad_filter
    assert grad_filter is not None
    start = time.perf_counter()
    for _ in range(calls):
        grad_filter()
    return (time.perf_counter() - start) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nanda-p113")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    args = parser.parse_args()
    print(
        f"{args.preset} {args.precision}, {os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())} threads; load before: {os.getloadavg()}",
        flush=True,
    )
    print(f"{'filter':8} {'ms/step on':>11} {'quartiles':>15} {'off':>7} {'quartiles':>15} {'on - off':>9} {'call alone':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("ema", "ma"):
            loop = trainer(args.preset, args.precision, kind, Path(tmp))
            grad_filter = loop.grad_filter
            ms_per_step(loop, 3 if kind != "ma" else loop.cfg.train.grad_filter_window + 1)  # warm-up; fills the MA window
            times: dict[bool, list[float]] = {True: [], False: []}
            for r in range(args.rounds):
                for on in (True, False) if r % 2 == 0 else (False, True):
                    loop.__dict__["grad_filter"] = grad_filter if on else None  # `grad_filter` is a cached_property
                    times[on].append(ms_per_step(loop, args.steps))
            loop.__dict__["grad_filter"] = grad_filter
            alone = median(ms_per_filter_call(loop, args.steps) for _ in range(args.rounds))
            (on_q1, on_med, on_q3), (off_q1, off_med, off_q3) = (quantiles(times[k], n=4) for k in (True, False))
            print(
                f"{kind:8} {on_med:11.1f} {on_q1:7.1f}-{on_q3:<7.1f} {off_med:7.1f} {off_q1:7.1f}-{off_q3:<7.1f} "
                f"{on_med - off_med:+9.1f} {alone:11.2f}",
                flush=True,
            )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
