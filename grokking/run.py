"""Reading a finished or running run directory: `grokking.load_run(path)`.

Everything here is recomputed from the run directory alone (config.json, metrics.csv, checkpoints),
so notebooks and analyses never need the command that trained the run.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pandas as pd

from grokking.config import RunConfig
from grokking.errors import UserError
from grokking.store import RunDir
from grokking.tasks.registry import build_task, sized


class Run:
    """A run directory opened for analysis: `.config`, `.steps`, `.metrics`, `.model(step)`."""

    def __init__(self, path: str | Path):
        self.dir = RunDir(path).require()
        self.path = self.dir.path
        self.config: RunConfig = self.dir.read_config()

    @property
    def steps(self) -> list[int]:
        """Steps that have a checkpoint file (a corrupt file is listed; `.model` on it raises)."""
        return self.dir.checkpoint_steps()

    @property
    def metrics(self) -> pd.DataFrame:
        """Whole rows of metrics.csv; a torn or hand-cut line is skipped with one warning naming the file."""
        return self.dir.read_metrics_table()

    @cached_property
    def task(self):
        return build_task(self.config)

    def weights(self, step: int | None = None) -> dict:
        """The TL-layout tensors of a checkpoint (the last one by default)."""
        return self.dir.read_checkpoint(self._resolve(step))

    def model(self, step: int | None = None, device: str = "cpu"):
        """A hooked model with the weights of `step` (the last checkpoint by default), in eval mode."""
        from grokking.model import Transformer, load_tensors

        model = Transformer(sized(self.config, self.task).model)  # the sizes config.json holds, from the task itself
        load_tensors(model, self.weights(step))
        return model.to(device).eval()

    def _resolve(self, step: int | None) -> int:
        steps = self.steps
        if not steps:
            raise UserError(f"{self.path} has no checkpoints yet; train it first")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise UserError(f"{self.path} has no checkpoint at step {step}; nearest is {min(steps, key=lambda s: abs(s - step))}")
        return step

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, preset={self.config.preset!r}, checkpoints={len(self.steps)})"


def load_run(path: str | Path) -> Run:
    """Open a run directory written by `grokking train` (or `grokking import`)."""
    return Run(path)
