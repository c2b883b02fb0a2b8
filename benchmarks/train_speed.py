"""ms/step of the training loop for a preset, next to the plain full-position PyTorch loop.

    .venv/bin/python benchmarks/train_speed.py [--preset nanda-p113] [--steps 50] [--seeds 8]

"plain" runs every position through the hooked model and takes the last position's logits, as a
straightforward PyTorch loop would; "lab" is the step `grokking train` runs (the table fast path), in
fp32 and in bf16 (`--set precision=bf16`); "batched" is `grokking train --batch-seeds N`, one step of
N seeds at once, also shown per seed-step (its ms/step divided by N), which is what the ratio compares.
All use the same AdamW and float64 loss. "+ eval/ckpt" adds the trainer's amortised cost of evaluating
every `eval_every` steps (always in fp32) and checkpointing every `checkpoint_every` steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from grokking.batched import open_batch, train_batched
from grokking.config import RunConfig, assemble_config
from grokking.experiments.grid import run_config
from grokking.store import RunDir
from grokking.tasks.registry import build_task, sized
from grokking.train import Trainer, build_model


def time_loop(step_fn: Callable[[], None], steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step_fn()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return (time.perf_counter() - start) / steps * 1000


def config(preset: str, precision: str, steps: int | None = None) -> RunConfig:
    """The preset in `precision`, built as a sweep builds a run's config."""
    return run_config(preset, {"precision": precision}, {}, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nanda-p113")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=8, help="seeds in the batched rows")
    args = parser.parse_args()
    cfg = assemble_config(args.preset)
    task = build_task(cfg)
    cfg = sized(cfg, task)
    tokens, labels = task.tokens[task.train_idx], task.labels[task.train_idx]
    results: dict[str, tuple[float, int]] = {}  # name -> (ms per step, seeds per step)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, betas=cfg.train.betas)

    def plain_step() -> None:
        loss = F.cross_entropy(model(tokens)[:, -1].double(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    results["plain"] = time_loop(plain_step, args.steps), 1
    seeds = list(range(args.seeds))
    for precision in ("fp32", "bf16"):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(config(args.preset, precision), RunDir(tmp), torch.device("cpu"))
            results[f"lab {precision}"] = time_loop(lambda: trainer.update(trainer.step_loss()[0]), args.steps), 1
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(config(args.preset, precision, args.steps * 4), RunDir(tmp), torch.device("cpu"))
            start = time.perf_counter()
            trainer.fit(progress=False)
            results[f"lab {precision} + eval/ckpt"] = (time.perf_counter() - start) / (args.steps * 4) * 1000, 1
        with tempfile.TemporaryDirectory() as tmp:
            _, batch = open_batch(config(args.preset, precision), seeds, [f"{tmp}/seed{s}" for s in seeds])
            assert batch is not None
            results[f"batched {precision}"] = time_loop(lambda: batch.update(batch.step_loss()[0]), args.steps), len(seeds)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train_batched(config(args.preset, precision, args.steps * 4), seeds, [f"{tmp}/seed{s}" for s in seeds], progress=False)
            results[f"batched {precision} + eval/ckpt"] = (time.perf_counter() - start) / (args.steps * 4) * 1000, len(seeds)
    print(f"{args.preset}: {len(labels)} training examples, {torch.get_num_threads()} threads")
    print(f"{'loop':<30}{'seeds':>6}{'ms/step':>10}{'ms/seed-step':>14}{'vs plain':>10}")
    plain = results["plain"][0]
    for name, (ms, n) in results.items():
        print(f"{name:<30}{n:>6}{ms:>10.1f}{ms / n:>14.1f}{plain / (ms / n):>9.1f}x")
    full_steps = cfg.train.steps
    for precision in ("fp32", "bf16"):
        solo = results[f"lab {precision} + eval/ckpt"][0] * full_steps / 60_000
        batched = results[f"batched {precision} + eval/ckpt"][0] * full_steps / 60_000
        print(
            f"projected full run ({full_steps} steps) in {precision}: {solo:.1f} min per seed alone, {batched:.1f} min for {len(seeds)} seeds batched"
        )


if __name__ == "__main__":
    main()
