"""What training optimises and how a model is evaluated, per task family.

An objective turns the task's tensors into a loss for one step and a row of metrics at evaluation
steps. The trainer only sees this interface, so the loop is the same for every task.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from grokking import fast_lm
from grokking.fast_forward import last_position_logits
from grokking.model import Transformer, eval_mode
from grokking.precision import autocast
from grokking.tasks.lm_data import encode
from grokking.tasks.modular import ModularTask
from grokking.tasks.registry import LMRunData


class Objective(Protocol):
    def step_loss(self, model: Transformer, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor] | None]:
        """The loss to minimise now, and (for full-batch objectives) the train metrics it gives for free."""

    def evaluate(self, model: Transformer, train_metrics: dict[str, Tensor] | None) -> dict[str, float]:
        """One metrics row (without `step`); `train_metrics` from `step_loss` avoids recomputing them."""

    def sample(self, generator: torch.Generator) -> Tensor | None:
        """This step's minibatch indices (None: the whole training set); the only randomness of a step."""

    def batch_loss(self, model: Transformer, batch: Tensor | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        """`step_loss` on a batch drawn by `sample`."""


def answer_loss_and_acc(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy in float64: losses reach 1e-7, where a float32 log-softmax would floor them."""
    loss = F.cross_entropy(logits.double(), labels)
    acc = (logits.argmax(-1) == labels).double().mean()
    return loss, acc


def sample_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """A minibatch from the run's own generator (seeded by the run's seed), so a seed trained in a batch
    of seeds draws exactly the minibatches of its solo run."""
    return torch.randint(n, (batch_size,), generator=generator).to(device)


class ModularObjective:
    """Cross-entropy at the answer position; full batch (one update per epoch) or sampled minibatches."""

    def __init__(self, task: ModularTask, batch_size: int, device: torch.device, dtype: torch.dtype | None = None):
        self.batch_size, self.dtype = batch_size, dtype
        self.train_tokens = task.tokens[task.train_idx].to(device)
        self.train_labels = task.labels[task.train_idx].to(device)
        self.test_tokens = task.tokens[task.test_idx].to(device)
        self.test_labels = task.labels[task.test_idx].to(device)

    @property
    def full_batch(self) -> bool:
        return self.batch_size == 0 or self.batch_size >= len(self.train_labels)

    def step_loss(self, model: Transformer, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor] | None]:
        return self.batch_loss(model, self.sample(generator))

    def sample(self, generator: torch.Generator) -> Tensor | None:
        """This step's minibatch indices, or None for the full batch."""
        return None if self.full_batch else sample_indices(len(self.train_labels), self.batch_size, generator, self.train_labels.device)

    def batch_loss(self, model: Transformer, idx: Tensor | None) -> tuple[Tensor, dict[str, Tensor] | None]:
        """The loss on `idx` (None: every training pair); no randomness, so batched seeds can vmap it."""
        if idx is None:
            logits = last_position_logits(model, self.train_tokens, self.dtype)
            if model.cfg.dropout or self.dtype:  # these would differ from an fp32 eval pass: evaluate() recomputes
                return F.cross_entropy(logits.double(), self.train_labels), None
            loss, acc = answer_loss_and_acc(logits, self.train_labels)
            return loss, {"train_loss": loss.detach(), "train_acc": acc}
        loss, _ = answer_loss_and_acc(last_position_logits(model, self.train_tokens[idx], self.dtype), self.train_labels[idx])
        return loss, None

    def evaluate(self, model: Transformer, train_metrics: dict[str, Tensor] | None) -> dict[str, float]:
        with eval_mode(model):
            if train_metrics is None:
                loss, acc = answer_loss_and_acc(last_position_logits(model, self.train_tokens), self.train_labels)
                train_metrics = {"train_loss": loss, "train_acc": acc}
            test_loss, test_acc = answer_loss_and_acc(last_position_logits(model, self.test_tokens), self.test_labels)
        row = {**train_metrics, "test_loss": test_loss, "test_acc": test_acc}
        return {k: float(v) for k, v in row.items()}


def lm_loss_and_acc(model: Transformer, tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy and accuracy over every non-pad position (trimmed to the longest row)."""
    tokens, mask = trim_to_longest(tokens, loss_mask)
    return next_token_loss_and_acc(model(tokens), tokens, mask)


def trim_to_longest(tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the pad-only tail shared by every row ([..., pos]): a causal model's earlier logits do not depend on it."""
    length = int(loss_mask.sum(-1).max()) + 1
    return tokens[..., :length], loss_mask[..., : length - 1]


def next_token_loss_and_acc(logits: Tensor, tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy of `logits` [batch, pos, vocab] at predicting `tokens` shifted by one, where `loss_mask`."""
    logits = logits[:, :-1][loss_mask]
    targets = tokens[:, 1:][loss_mask]
    return F.cross_entropy(logits.float(), targets), (logits.argmax(-1) == targets).float().mean()


def fast_lm_loss_and_acc(model: Transformer, tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """`lm_loss_and_acc` through fast_lm.py (no work on padding) unless hooks or training dropout need the hooked forward."""
    if fast_lm.supports_fast_lm(model):
        return fast_lm.loss_and_acc(model, tokens, loss_mask)
    return lm_loss_and_acc(model, tokens, loss_mask)


class LMObjective:
    """Causal-LM loss over `<sos> input target <eos>`; evaluation with the task's published metric."""

    def __init__(self, data: LMRunData, batch_size: int, device: torch.device, dtype: torch.dtype | None = None):
        self.data, self.batch_size, self.device, self.dtype = data, batch_size, device, dtype
        self.tokens = data.train.tokens.to(device)
        self.loss_mask = data.train.loss_mask.to(device)
        vocab = data.lm_task.vocab
        self.encoded_eval = {k: encode(v, vocab) for k, v in data.eval_sets.items() if k in ("train", "test") and v}

    def step_loss(self, model: Transformer, generator: torch.Generator) -> tuple[Tensor, None]:
        return self.batch_loss(model, self.sample(generator))

    def sample(self, generator: torch.Generator) -> Tensor:
        """This step's minibatch indices into the training sequences."""
        return sample_indices(len(self.tokens), self.batch_size, generator, self.device)

    def batch_loss(self, model: Transformer, idx: Tensor) -> tuple[Tensor, None]:
        with autocast(self.dtype, self.device):
            loss, _ = fast_lm_loss_and_acc(model, self.tokens[idx], self.loss_mask[idx])
        return loss, None

    def evaluate(self, model: Transformer, train_metrics: dict[str, Tensor] | None) -> dict[str, float]:
        forward = fast_lm.logits if fast_lm.supports_fast_lm(model) else Transformer.__call__

        def logits_fn(tokens: Tensor) -> Tensor:
            return forward(model, tokens.to(self.device)).cpu()

        row: dict[str, float] = {}
        with eval_mode(model):
            for split, enc in self.encoded_eval.items():
                loss, acc = fast_lm_loss_and_acc(model, enc.tokens.to(self.device), enc.loss_mask.to(self.device))
                row[f"{split}_loss"], row[f"{split}_acc"] = loss.item(), acc.item()
            for split in self.data.scored_splits:
                scores = self.data.lm_task.evaluate(logits_fn, self.data.eval_sets[split])
                row[f"{split}_acc"] = scores.pop("acc")
                row.update({f"{split}_{k}": v for k, v in scores.items()})
        return row
