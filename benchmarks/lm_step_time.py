"""ms/step of language-model training for structural presets, and what a full run would cost here.

    .venv/bin/python benchmarks/lm_step_time.py [PRESET ...]     (default: qf-cpu qf-paper)

Times optimiser steps only (no evaluation), after a short warm-up, on whatever device `auto` picks.
"""

from __future__ import annotations

import sys
import tempfile
import time

import torch

from grokking.config import preset_config
from grokking.store import RunDir
from grokking.train import Trainer, resolve_device


def ms_per_step(preset: str, steps: int = 20, warmup: int = 3) -> tuple[float, int]:
    cfg = preset_config(preset)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunDir(tmp), resolve_device("auto"))
    trainer.model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss, _ = trainer.objective.step_loss(trainer.model, trainer.generator)
        trainer.update(loss)
    return (time.perf_counter() - start) / steps * 1000, cfg.train.steps


def main() -> None:
    presets = sys.argv[1:] or ["qf-cpu", "qf-paper"]
    print(f"{torch.get_num_threads()} threads")
    for preset in presets:
        ms, steps = ms_per_step(preset)
        print(f"{preset:<10} {ms:8.0f} ms/step   full run of {steps} steps: {ms * steps / 3.6e6:6.1f} h (training only)")


if __name__ == "__main__":
    main()
