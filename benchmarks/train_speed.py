"""ms/step of the training loop for a preset, next to the plain full-position PyTorch loop.

    .venv/bin/python benchmarks/train_speed.py [--preset nanda-p113] [--steps 50]

"plain" runs every position through the hooked model and takes the last position's logits, as a
straightforward PyTorch loop would; "lab" is the step `grokking train` runs (the table fast path), in
fp32 and in bf16 (`--set precision=bf16`). All use the same AdamW and float64 loss. "+ eval/ckpt" adds
the trainer's amortised cost of evaluating every `eval_every` steps (always in fp32) and checkpointing
every `checkpoint_every` steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

from grokking.config import preset_config
from grokking.train import Trainer, build_model
from grokking.tasks.registry import build_task
from grokking.store import RunDir


def time_loop(step_fn, steps: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        step_fn()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nanda-p113")
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    cfg = preset_config(args.preset)
    task = build_task(cfg)
    tokens, labels = task.tokens[task.train_idx], task.labels[task.train_idx]
    results = {}
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, betas=cfg.train.betas)

    def plain_step() -> None:
        loss = F.cross_entropy(model(tokens)[:, -1].double(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    results["plain"] = time_loop(plain_step, args.steps)
    full_steps = cfg.train.steps
    for precision in ("fp32", "bf16"):
        cfg = preset_config(args.preset)
        cfg.train.precision = precision
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, RunDir(tmp), torch.device("cpu"))
        results[f"lab {precision}"] = time_loop(
            lambda: trainer.update(trainer.objective.step_loss(trainer.model, trainer.generator)[0]), args.steps)
        with tempfile.TemporaryDirectory() as tmp:
            cfg.train.steps = args.steps * 4
            trainer = Trainer(cfg, RunDir(tmp), torch.device("cpu"))
            start = time.perf_counter()
            trainer.fit(progress=False)
            results[f"lab {precision} + eval/ckpt"] = (time.perf_counter() - start) / cfg.train.steps * 1000
    print(f"{args.preset}: {len(labels)} training examples, {torch.get_num_threads()} threads")
    print(f"{'loop':<26}{'ms/step':>10}{'vs plain':>10}")
    for name, ms in results.items():
        print(f"{name:<26}{ms:>10.1f}{results['plain'] / ms:>9.1f}x")
    for precision in ("fp32", "bf16"):
        minutes = results[f"lab {precision} + eval/ckpt"] * full_steps / 60_000
        print(f"projected full run ({full_steps} steps) in {precision}: {minutes:.1f} min")


if __name__ == "__main__":
    main()
