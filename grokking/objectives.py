"""What training optimises and how a model is evaluated, per task family.

An objective turns the task's tensors into a loss for one step and a row of metrics at evaluation
steps. The trainer only sees this interface, so the loop is the same for every task.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from grokking.fast_forward import last_position_logits
from grokking.model import Transformer
from grokking.precision import autocast
from grokking.tasks.lm_data import encode
from grokking.tasks.modular import ModularTask
from grokking.tasks.registry import LMRunData


class Objective(Protocol):
    def step_loss(self, model: Transformer, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor] | None]:
        """The loss to minimise now, and (for full-batch objectives) the train metrics it gives for free."""

    def evaluate(self, model: Transformer, train_metrics: dict[str, Tensor] | None) -> dict[str, float]:
        """One metrics row (without `step`); `train_metrics` from `step_loss` avoids recomputing them."""


def answer_loss_and_acc(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy in float64: losses reach 1e-7, where a float32 log-softmax would floor them."""
    loss = F.cross_entropy(logits.double(), labels)
    acc = (logits.argmax(-1) == labels).double().mean()
    return loss, acc


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
        if self.full_batch:
            loss, acc = answer_loss_and_acc(last_position_logits(model, self.train_tokens, self.dtype), self.train_labels)
            # Dropout (or bf16) would make these differ from an fp32 eval pass; otherwise they are reused.
            free = None if model.cfg.dropout or self.dtype else {"train_loss": loss.detach(), "train_acc": acc}
            return loss, free
        idx = torch.randint(len(self.train_labels), (self.batch_size,), generator=generator).to(self.train_labels.device)
        loss, _ = answer_loss_and_acc(last_position_logits(model, self.train_tokens[idx], self.dtype), self.train_labels[idx])
        return loss, None

    @torch.no_grad()
    def evaluate(self, model: Transformer, train_metrics: dict[str, Tensor] | None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        if train_metrics is None:
            loss, acc = answer_loss_and_acc(last_position_logits(model, self.train_tokens), self.train_labels)
            train_metrics = {"train_loss": loss, "train_acc": acc}
        test_loss, test_acc = answer_loss_and_acc(last_position_logits(model, self.test_tokens), self.test_labels)
        model.train(was_training)
        row = {**train_metrics, "test_loss": test_loss, "test_acc": test_acc}
        return {k: float(v) for k, v in row.items()}


def lm_loss_and_acc(model: Transformer, tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy and accuracy over every non-pad position (trimmed to the longest row)."""
    length = int(loss_mask.sum(1).max()) + 1
    tokens, mask = tokens[:, :length], loss_mask[:, : length - 1]
    logits = model(tokens)[:, :-1][mask]
    targets = tokens[:, 1:][mask]
    return F.cross_entropy(logits.float(), targets), (logits.argmax(-1) == targets).float().mean()


class LMObjective:
    """Causal-LM loss over `<sos> input target <eos>`; evaluation with the task's published metric."""

    def __init__(self, data: LMRunData, batch_size: int, device: torch.device, dtype: torch.dtype | None = None):
        self.data, self.batch_size, self.device, self.dtype = data, batch_size, device, dtype
        self.tokens = data.train.tokens.to(device)
        self.loss_mask = data.train.loss_mask.to(device)
        vocab = data.task.vocab
        self.encoded_eval = {k: encode(v, vocab) for k, v in data.eval_sets.items() if k in ("train", "test") and v}

    def step_loss(self, model: Transformer, generator: torch.Generator) -> tuple[Tensor, None]:
        idx = torch.randint(len(self.tokens), (self.batch_size,), generator=generator).to(self.device)
        with autocast(self.dtype, self.device):
            loss, _ = lm_loss_and_acc(model, self.tokens[idx], self.loss_mask[idx])
        return loss, None

    @torch.no_grad()
    def evaluate(self, model: Transformer, train_metrics: dict[str, Tensor] | None) -> dict[str, float]:
        was_training = model.training
        model.eval()
        row: dict[str, float] = {}
        for split, enc in self.encoded_eval.items():
            loss, acc = lm_loss_and_acc(model, enc.tokens.to(self.device), enc.loss_mask.to(self.device))
            row[f"{split}_loss"], row[f"{split}_acc"] = loss.item(), acc.item()

        def logits_fn(tokens: Tensor) -> Tensor:
            return model(tokens.to(self.device)).cpu()

        for split in ("val", "gen"):
            scores = self.data.task.evaluate(logits_fn, self.data.eval_sets[split])
            row[f"{split}_acc"] = scores.pop("acc")
            row.update({f"{split}_{k}": v for k, v in scores.items()})
        model.train(was_training)
        return row
