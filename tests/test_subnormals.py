"""Training flushes subnormal floats to zero, and only while it trains (grokking.precision.subnormals_flushed)."""

from __future__ import annotations

import torch

from grokking.train import Trainer, train

from conftest import tiny_config

SUBNORMAL = 1e-40  # below fp32's smallest normal number, 1.18e-38


def subnormal_survives() -> bool:
    """Whether an fp32 product that lands in the subnormal range keeps its value (False: flushed to zero)."""
    return (torch.tensor([SUBNORMAL * 4], dtype=torch.float32) * 0.5).item() != 0.0


def test_training_steps_run_with_subnormals_flushed_and_the_default_returns_after(tmp_path, monkeypatch):
    assert subnormal_survives(), "PyTorch's default keeps subnormals; the test needs that to tell the two apart"
    seen: list[bool] = []
    step_loss = Trainer.step_loss

    def recording_step_loss(self):
        seen.append(subnormal_survives())
        return step_loss(self)

    monkeypatch.setattr(Trainer, "step_loss", recording_step_loss)
    train(tiny_config(steps="5"), tmp_path / "run", progress=False)
    assert seen == [False] * 5
    assert subnormal_survives()
