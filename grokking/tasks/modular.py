"""The modular-arithmetic task: inputs `a b =`, answer (a op b) mod p at the last position.

All p^2 pairs are enumerated in a-major order (row index a * p + b), split into train and test by a
permutation seeded with `data_seed`, which is separate from the model's init seed, so that one split
can be trained from many inits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from grokking.config import TaskConfig


def _answers(a: Tensor, b: Tensor, p: int, operation: str, data_seed: int) -> Tensor:
    if operation == "add":
        return (a + b) % p
    if operation == "subtract":
        return (a - b) % p
    if operation == "x2xyy2":
        return (a * a + a * b + b * b) % p
    # A random table has no algebraic structure to find: the control for "is it the algorithm?".
    table = torch.randint(0, p, (p, p), generator=torch.Generator().manual_seed(data_seed + 1))
    return table[a, b]


def _split(p: int, frac_train: float, data_seed: int, method: str) -> Tensor:
    """Training rows of the a-major pair list."""
    if method == "python-shuffle":
        order = list(range(p * p))
        random.Random(data_seed).shuffle(order)  # same permutation as the paper's random.seed + random.shuffle
        return torch.tensor(order[: int(frac_train * p * p)])
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(data_seed))
    return perm[: int(round(frac_train * p * p))]


@dataclass
class ModularTask:
    """The p^2 examples of one operation and their split; tensors live on CPU until moved."""

    p: int
    operation: str
    frac_train: float
    data_seed: int
    train_idx: Tensor
    test_idx: Tensor
    tokens: Tensor  # [p^2, 3] in a-major order
    labels: Tensor  # [p^2]
    n_outputs: int = 0

    @property
    def d_vocab(self) -> int:
        return self.p + 1  # the `=` token is id p

    @property
    def d_vocab_out(self) -> int:
        return self.n_outputs or self.p

    n_ctx = 3

    @property
    def eq_token(self) -> int:
        return self.p

    @classmethod
    def from_config(cls, cfg: TaskConfig, train_idx: Tensor | None = None) -> ModularTask:
        """Build the task; `train_idx` overrides the seeded split (used for imported runs)."""
        p = cfg.p
        a = torch.arange(p).repeat_interleave(p)
        b = torch.arange(p).repeat(p)
        tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)
        labels = _answers(a, b, p, cfg.operation, cfg.data_seed)
        if train_idx is None:
            train_idx = _split(p, cfg.frac_train, cfg.data_seed, cfg.split)
        mask = torch.zeros(p * p, dtype=torch.bool)
        mask[train_idx] = True
        test_idx = torch.nonzero(~mask).squeeze(1)
        return cls(p, cfg.operation, cfg.frac_train, cfg.data_seed, train_idx, test_idx, tokens, labels, cfg.n_outputs)

    def is_train_grid(self) -> Tensor:
        """[p, p] bool: which (a, b) pairs are in the training set."""
        mask = torch.zeros(self.p * self.p, dtype=torch.bool)
        mask[self.train_idx] = True
        return mask.view(self.p, self.p)
