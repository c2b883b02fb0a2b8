"""The objective of `icl-functions` runs: mean squared error at the positions that predict y.

Every step draws fresh prompts from the mixture at the curriculum's current size, so there is no finite
training set; `train_loss` at an evaluation is the MSE on fixed full-size prompts of the mixture (the
training distribution) and `test_loss` the same prompts' normalised error (`grokking.analysis.icl`),
averaged over the in-context example counts 0..n-1, so 1 is the zero predictor. `err_<family>` splits it
per family. Out-of-mixture sets are scored by `grokking analyze`, not at every evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokking.analysis.icl import normalised_error
from grokking.model import Transformer, eval_mode
from grokking.precision import autocast
from grokking.tasks.icl_functions import ICLTask, Prompts, predict


class ICLObjective:
    """MSE of the read-out at every x position; the batch's prompt length and dimensions follow the curriculum."""

    def __init__(self, task: ICLTask, batch_size: int, device: torch.device, dtype: torch.dtype | None = None):
        self.task, self.batch_size, self.device, self.dtype = task, batch_size, device, dtype
        self.mixture = task.mixture_set().to(device)
        self.step = 0

    def set_step(self, step: int) -> None:
        """The trainer's step, which sets the curriculum stage of the next batch."""
        self.step = step

    def sample(self, generator: torch.Generator) -> Prompts:
        return self.task.sample(self.batch_size, self.step, generator).to(self.device)

    def step_loss(self, model: Transformer, generator: torch.Generator) -> tuple[Tensor, None]:
        return self.batch_loss(model, self.sample(generator))

    def batch_loss(self, model: Transformer, batch: Prompts) -> tuple[Tensor, None]:
        with autocast(self.dtype, self.device):
            pred = predict(model, batch.xs, batch.ys)
        return (pred.float() - batch.ys).pow(2).mean(), None

    def evaluate(self, model: Transformer, train_metrics: dict[str, Tensor] | None) -> dict[str, float]:
        m = self.mixture
        with eval_mode(model):
            pred = predict(model, m.xs, m.ys)
        row = {"train_loss": (pred - m.ys).pow(2).mean().item(), "test_loss": normalised_error(pred, m.ys).mean().item()}
        for i, name in enumerate(self.task.families):
            rows = m.family == i
            row[f"err_{name}"] = normalised_error(pred[rows], m.ys[rows]).mean().item()
        return row
