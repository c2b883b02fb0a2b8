"""Which checkpoints get the expensive, per-step extras (heat-maps, tree projections) of `grokking analyze`."""

from __future__ import annotations

import torch


def spread_steps(steps: list[int], n: int) -> list[int]:
    """`n` steps spread evenly over `steps` (first and last included)."""
    idx = torch.linspace(0, len(steps) - 1, min(n, len(steps))).round().long().unique()
    return [steps[i] for i in idx.tolist()]
