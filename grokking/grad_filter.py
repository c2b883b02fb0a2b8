"""Grokfast gradient filters (Lee et al. 2024, arXiv 2405.20233): amplify the slow part of each gradient.

Each parameter's gradient over steps is treated as a signal; its low-pass part is added back,
`g <- g + lambda * slow(g)`, after backward and before clipping and the AdamW step:

- `ema`: slow = mu_t = alpha * mu_{t-1} + (1 - alpha) * g_t, with mu started at the first gradient
  (the paper's `gradfilter_ema`, which starts its dict from the first `p.grad`).
- `ma`: slow = the mean of the last `window` gradients, applied only once the window is full (the
  paper's `gradfilter_ma` default, `warmup=True`). A ring buffer holds the window and a running sum
  its total (add the new gradient, subtract the one it replaces), so a step costs O(1), not O(window).

The filter acts elementwise, so one filter over a batch's stacked parameters (`grokking.batched`) gives
each seed exactly its solo filter; `seed_state` cuts one seed's slice out for its resume file. The state
is part of the resume file (`filter.*` tensors), so a resumed filtered run is bit-identical.
`grad_filter=none` builds no filter at all: the step runs the code it ran before filters existed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokking.config import TrainConfig

PREFIX = "filter."


class GradFilter:
    """The filter state for named parameters, and the in-place update of their `.grad`."""

    def __init__(self, tr: TrainConfig, params: dict[str, Tensor]):
        self.kind, self.alpha, self.lam, self.window = tr.grad_filter, tr.grad_filter_alpha, tr.grad_filter_lambda, tr.grad_filter_window
        self.params = params
        self.slow: dict[str, Tensor] = {}  # ema: mu; ma: a ring buffer [window, *shape]
        self.total: dict[str, Tensor] = {}  # ma: the ring's running sum
        self.seen = 0  # gradients filtered so far (ma: which slot the next one fills, and whether the window is full)

    @torch.no_grad()
    def __call__(self) -> None:
        """Filter every parameter's gradient in place (parameters without a gradient are left alone)."""
        for name, param in self.params.items():
            g = param.grad
            if g is None:
                continue
            if self.kind == "ema":
                mu = self.slow.get(name)
                if mu is None:
                    self.slow[name] = mu = g.detach().clone()
                else:
                    mu.mul_(self.alpha).add_(g, alpha=1.0 - self.alpha)
                g.add_(mu, alpha=self.lam)
            else:
                ring, total = self.slow.get(name), self.total.get(name)
                if ring is None or total is None:
                    self.slow[name] = ring = g.new_zeros((self.window, *g.shape))
                    self.total[name] = total = torch.zeros_like(g)
                slot = ring[self.seen % self.window]
                total.sub_(slot).add_(g)  # the slot is still zero while the window fills
                slot.copy_(g)
                if self.seen + 1 >= self.window:
                    g.add_(total / self.window, alpha=self.lam)
        self.seen += 1

    # -- resume state -------------------------------------------------------------------------------
    def state(self) -> dict[str, Tensor]:
        """The resume file's `filter.*` tensors."""
        tensors = {f"{PREFIX}{name}": value for name, value in self.slow.items()}
        tensors.update({f"{PREFIX}sum.{name}": value for name, value in self.total.items()})
        tensors[f"{PREFIX}seen"] = torch.tensor(self.seen, dtype=torch.int64)
        return tensors

    def seed_state(self, index: int) -> dict[str, Tensor]:
        """`state()` of one seed of a batch whose parameters are stacked on dim 0."""
        tensors = {f"{PREFIX}{name}": value[index] if self.kind == "ema" else value[:, index] for name, value in self.slow.items()}
        tensors.update({f"{PREFIX}sum.{name}": value[index] for name, value in self.total.items()})
        tensors[f"{PREFIX}seen"] = torch.tensor(self.seen, dtype=torch.int64)
        return tensors

    def load(self, tensors: dict[str, Tensor]) -> None:
        """Restore from a resume file's tensors (a run started before the filter state existed has none: a fresh start)."""
        self.seen = int(tensors[f"{PREFIX}seen"]) if f"{PREFIX}seen" in tensors else 0
        self.slow, self.total = (
            {name: tensors[f"{prefix}{name}"].to(param.device).clone() for name, param in self.params.items() if f"{prefix}{name}" in tensors}
            for prefix in (PREFIX, f"{PREFIX}sum.")
        )

    def load_seeds(self, per_seed: list[dict[str, Tensor]]) -> None:
        """Restore a batch's state from each seed's resume tensors (every seed at the same step)."""
        stacked: dict[str, Tensor] = {}
        dim = 0 if self.kind == "ema" else 1
        for name in self.params:
            key = f"{PREFIX}{name}"
            if all(key in tensors for tensors in per_seed):
                stacked[key] = torch.stack([tensors[key] for tensors in per_seed], dim=dim)
            key = f"{PREFIX}sum.{name}"
            if all(key in tensors for tensors in per_seed):
                stacked[key] = torch.stack([tensors[key] for tensors in per_seed])
        if per_seed and f"{PREFIX}seen" in per_seed[0]:
            stacked[f"{PREFIX}seen"] = per_seed[0][f"{PREFIX}seen"]
        self.load(stacked)


def make_filter(tr: TrainConfig, params: dict[str, Tensor]) -> GradFilter | None:
    """The configured filter over `params`, or None for `grad_filter=none` (the step is then untouched)."""
    return None if tr.grad_filter == "none" else GradFilter(tr, params)


def filter_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `filter.*` tensors of a resume file."""
    return {k: v for k, v in tensors.items() if k.startswith(PREFIX)}
