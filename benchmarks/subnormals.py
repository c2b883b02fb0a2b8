"""What flushing subnormal floats saves in training: the run's own loss + backward at its checkpoints, with and without.

    .venv/bin/python benchmarks/subnormals.py RUN_DIR [--steps 100,LAST] [--repeats 7]

RUN_DIR is any run (e.g. `grokking train nanda-p113 --set precision=fp32`). For each checkpoint it loads the
weights into the run's own training objective (the same fast path and precision `grokking train` uses) and
prints the share of the training softmax's probabilities that are subnormal in fp32 (modular runs) and the
best-of-`repeats` time of one loss + backward, with PyTorch's default and with `torch.set_flush_denormal(True)`
(what `grokking.precision.subnormals_flushed` turns on during training), alternating the two so that a slow
spell of the host hits both. The optimiser step is left out: its cost does not depend on the values.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from grokking import load_run
from grokking.model import load_tensors
from grokking.store import RunDir
from grokking.tasks.modular import ModularTask
from grokking.train import Trainer


def loss_backward_ms(trainer: Trainer, flush: bool) -> float:
    torch.set_flush_denormal(flush)
    start = time.perf_counter()
    loss, _ = trainer.step_loss()
    loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - start
    torch.set_flush_denormal(False)
    return elapsed * 1000


def subnormal_share(trainer: Trainer) -> float:
    """Share of the training softmax's probabilities below fp32's smallest normal (modular runs; NaN otherwise)."""
    task = trainer.task
    if not isinstance(task, ModularTask):
        return float("nan")
    with torch.no_grad():
        probs = torch.softmax(trainer.model(task.tokens[task.train_idx])[:, -1].float(), -1)
    return ((probs > 0) & (probs < torch.finfo(torch.float32).tiny)).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", default="", help="comma-separated checkpoint steps [default: the second and the last]")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    run = load_run(args.run_dir)
    trainer = Trainer(run.config, RunDir(tempfile.mkdtemp()), torch.device("cpu"))
    steps = [int(s) for s in args.steps.split(",")] if args.steps else [run.steps[1], run.steps[-1]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, preset {run.config.preset}, precision {run.config.train.precision}")
    print(f"{'step':>7} {'subnormal probs':>16} {'default ms':>11} {'flushed ms':>11} {'ratio':>6}")
    for step in steps:
        load_tensors(trainer.model, run.weights(step))
        subnormal = subnormal_share(trainer)
        default, flushed = [], []
        for _ in range(args.repeats):
            default.append(loss_backward_ms(trainer, flush=False))
            flushed.append(loss_backward_ms(trainer, flush=True))
        print(f"{step:>7} {subnormal:>16.3f} {min(default):>11.1f} {min(flushed):>11.1f} {min(default) / min(flushed):>6.2f}")


if __name__ == "__main__":
    main()
