"""The metric-choice lens (Schaeffer, Miranda & Koyejo 2023, "Are emergent abilities a mirage?").

One set of model outputs, scored several ways. If per-token correctness p improves smoothly, exact
match on an L-token target behaves like p^L (sharp, "emergent") while token edit distance behaves like
L(1 - p) (smooth). Discontinuous metrics (exact match, subset accuracy) sit side by side here with
continuous ones (per-token accuracy, edit distance, log-likelihood, Brier), so a jump can be checked
against the same outputs under a metric that cannot jump. `emergence_score` puts a number on the jump.

All functions are pure. Token sequences are lists of hashable tokens (ids or strings) or 1-D tensors;
batched helpers return means over examples and `nan` for an empty batch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

Tokens = Sequence[Hashable] | Tensor

SUBSET_KS = (1, 2, 3, 4, 5)


def _as_list(tokens: Tokens) -> list[Hashable]:
    return tokens.tolist() if isinstance(tokens, Tensor) else list(tokens)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")


def _check_paired(preds: Sequence[Tokens], targets: Sequence[Tokens]) -> None:
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} predictions but {len(targets)} targets")


# ---- per-sequence string metrics --------------------------------------------------------------------


def exact_match(pred_tokens: Tokens, target_tokens: Tokens) -> bool:
    """Whole target right, nothing extra. The all-or-nothing metric behind most claimed emergence:
    with per-token correctness p it scales like p^L, so smooth progress in p looks like a jump."""
    return _as_list(pred_tokens) == _as_list(target_tokens)


def per_token_accuracy(pred_tokens: Tokens, target_tokens: Tokens) -> float:
    """Fraction of target positions predicted right, position by position (a missing token is wrong;
    extra tokens are ignored, which `token_edit_distance` catches). Linear in p, so it cannot jump
    where exact match does."""
    pred, target = _as_list(pred_tokens), _as_list(target_tokens)
    if not target:
        raise ValueError("per-token accuracy needs a non-empty target")
    return sum(p == t for p, t in zip(pred, target)) / len(target)


def token_edit_distance(pred_tokens: Tokens, target_tokens: Tokens) -> int:
    """Levenshtein distance over tokens (unit-cost insert, delete, substitute): an empty output costs
    len(target), each extra token 1. Schaeffer et al.'s continuous metric, ~ L(1 - p): smooth in scale."""
    pred, target = _as_list(pred_tokens), _as_list(target_tokens)
    previous = list(range(len(target) + 1))  # distance from pred[:0] to each target prefix
    for i, p in enumerate(pred, 1):
        current = [i]
        for j, t in enumerate(target, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (p != t)))
        previous = current
    return previous[-1]


def mean_exact_match(preds: Sequence[Tokens], targets: Sequence[Tokens]) -> float:
    _check_paired(preds, targets)
    return _mean(float(exact_match(p, t)) for p, t in zip(preds, targets))


def mean_per_token_accuracy(preds: Sequence[Tokens], targets: Sequence[Tokens]) -> float:
    _check_paired(preds, targets)
    return _mean(per_token_accuracy(p, t) for p, t in zip(preds, targets))


def mean_token_edit_distance(preds: Sequence[Tokens], targets: Sequence[Tokens]) -> float:
    _check_paired(preds, targets)
    return _mean(float(token_edit_distance(p, t)) for p, t in zip(preds, targets))


def prefix_metrics(preds: Sequence[Tokens], targets: Sequence[Tokens], lengths: Iterable[int]) -> dict[str, float]:
    """Exact match and edit distance of the first L target tokens, for each target length L in `lengths`.

    One model has one target length, so target length is varied by scoring prefixes: exact match of
    pred[:L] against target[:L] and token edit distance between them. For digit addition written
    least-significant digit first, the first L answer tokens are exactly the answer of L-digit addition
    mod 10^L, a task of target length L. Anything after the L-th output token is ignored, so at the full
    length these differ from `exact_match` / `token_edit_distance` only for outputs with extra tokens.
    Keys: exact_match_L{L}, edit_distance_L{L}.
    """
    _check_paired(preds, targets)
    pairs = [(_as_list(p), _as_list(t)) for p, t in zip(preds, targets)]
    out: dict[str, float] = {}
    for n in lengths:
        out[f"exact_match_L{n}"] = _mean(float(p[:n] == t[:n]) for p, t in pairs)
        out[f"edit_distance_L{n}"] = _mean(float(token_edit_distance(p[:n], t[:n])) for p, t in pairs)
    return out


# ---- probabilistic metrics ----------------------------------------------------------------------------


def target_log_likelihood(logits: Tensor, targets: Tensor, mask: Tensor) -> float:
    """Mean log-probability (nats per token) of the teacher-forced targets over `mask`.

    `logits` [N, T, V] are aligned with `targets` [N, T]: `logits[:, t]` is the distribution for
    `targets[:, t]` (shift a causal LM's outputs first). The model's own loss, so it moves whenever the
    model improves, even while every greedy answer is still wrong. `nan` if the mask is empty.
    """
    logp = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets.long()[..., None])[..., 0]
    mask = mask.bool()
    return logp[mask].mean().item() if mask.any() else float("nan")


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score: mean over examples of sum_c (p_c - onehot(label)_c)^2.

    Convention: summed over classes, so it runs from 0 (perfect one-hot) to 2 (confident and wrong);
    the uniform prediction over C classes scores 1 - 1/C. Lower is better. A strictly proper scoring
    rule: replacing Multiple Choice Grade with it removed LaMDA's emergence in Schaeffer et al.
    """
    if probs.shape[0] == 0:
        return float("nan")
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[-1]).to(torch.float64)
    return ((probs.double() - onehot) ** 2).sum(-1).mean().item()


def binary_brier_score(probs: Tensor, outcomes: Tensor) -> float:
    """Binary Brier score: mean (p - y)^2 for the predicted probability p of the outcome y in {0, 1}.
    Runs 0..1; half the two-class `brier_score` of the same prediction (which counts both classes)."""
    if probs.numel() == 0:
        return float("nan")
    return ((probs.double() - outcomes.double()) ** 2).mean().item()


# ---- subset accuracy ---------------------------------------------------------------------------------


def subset_accuracy(correct: Tensor, k: int) -> float:
    """Probability that K independently drawn test examples are all right (Schaeffer et al.'s induced
    emergence on MNIST), estimated without bias as C(c, K) / C(N, K) for c right out of N.

    That is the mean over *all* K-subsets of "all right", the unbiased (minimum-variance) estimator of
    p^K: acc^K is biased upwards for finite N (E[acc^K] >= p^K) and disjoint K-groups waste data and
    depend on the order of examples. `nan` if K > N.
    """
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    n, c = correct.numel(), int(correct.bool().sum())
    if k > n:
        return float("nan")
    return math.prod((c - j) / (n - j) for j in range(k))


def subset_accuracies(correct: Tensor, ks: Iterable[int] = SUBSET_KS) -> dict[int, float]:
    """`subset_accuracy` for each K (default 1..5): the same outputs sharpen as K grows."""
    return {k: subset_accuracy(correct, k) for k in ks}


# ---- emergence score ---------------------------------------------------------------------------------


def emergence_score(x_scales: Sequence[float], y: Sequence[float]) -> float:
    """BIG-Bench breakthroughness of a metric y over scales x:
    sign(argmax_i y_i - argmin_i y_i) * (max y - min y) / sqrt(median_i (y_i - y_{i-1})^2),
    with the series first ordered by scale (ties keep their given order; argmax/argmin take the first).

    Large when the whole range is covered in few steps (a jump), about n - 1 for a straight line of n
    points. Positive when the best value comes at a larger scale, so pass a higher-is-better metric
    (negate edit distance, loss or Brier). A zero median with a non-zero range (more than half the steps
    are flat: a pure step) returns +-inf rather than adding an epsilon, whose choice would set the
    value; a constant series returns 0.0 (sign 0, no breakthrough).
    """
    x, values = np.asarray(x_scales, dtype=float), np.asarray(y, dtype=float)
    if x.shape != values.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("emergence_score needs matching 1-D x and y with at least two points")
    values = values[np.argsort(x, kind="stable")]
    sign = float(np.sign(int(np.argmax(values)) - int(np.argmin(values))))
    if sign == 0.0:
        return 0.0
    spread = float(values.max() - values.min())
    scale = math.sqrt(float(np.median(np.diff(values) ** 2)))
    return sign * spread / scale if scale > 0 else sign * math.inf


# Which way is better, by metric name (a `train_`/`test_` prefix and an `_L{n}`/`_k{n}` suffix are ignored).
# The lens computes every emergence score on direction * metric, so a positive score always means "gets
# better with scale (or training)" and the size of the score is comparable between metrics.
LOWER_IS_BETTER = frozenset({"edit_distance", "brier", "loss", "restricted_loss"})


def metric_direction(name: str) -> int:
    """+1 if larger values of metric `name` are better, -1 if smaller ones are (edit distance, Brier, losses).

    Excluded loss is +1: it is not a performance metric but a progress measure that *rises* as the
    Fourier circuit replaces memorisation (Nanda et al.), so rising is progress.
    """
    base = re.sub(r"^(train|test|val|gen)_", "", name)
    base = re.sub(r"_(L|k)\d+$", "", base)
    return -1 if base in LOWER_IS_BETTER else 1


def oriented_emergence_score(x_scales: Sequence[float], y: Sequence[float], name: str) -> float:
    """`emergence_score` of metric `name` oriented so that better is up (see `metric_direction`)."""
    return emergence_score(x_scales, [metric_direction(name) * v for v in y])


def progress_points(x: Sequence[float], y: Sequence[float], fractions: Sequence[float] = (0.1, 0.5, 0.9)) -> list[float]:
    """For each fraction f, the first x (in scale order) at which y has covered f of the way from its first
    value to its best (largest) value; nan if y never rises above its first value.

    The emergence score's denominator is the median step, so over checkpoints, where most steps sit on a
    plateau, it rewards flatness as much as a jump. Where a metric moves, and how many steps its
    10-90% rise takes, is the complementary reading: a progress measure that leads accuracy moves earlier.
    Pass a higher-is-better series (see `metric_direction`).
    """
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    xs, values = np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order]
    gain = values.max() - values[0]
    if not gain > 0:
        return [math.nan for _ in fractions]
    covered = (values - values[0]) / gain
    return [float(xs[np.argmax(covered >= f)]) for f in fractions]


# ---- everything side by side ------------------------------------------------------------------------


def metric_table(preds: Sequence[Tokens], logits: Tensor, targets: Tensor, mask: Tensor, ks: Iterable[int] = SUBSET_KS) -> dict[str, float]:
    """All metrics of one model (or checkpoint) on the same outputs, for plotting against scale or time.

    `preds[i]` is the greedy output (ids) for example i; its target is `targets[i][mask[i]]`. `logits`
    [N, T, V] are aligned with `targets` [N, T] as in `target_log_likelihood`; `mask` [N, T] marks the
    scored (answer) positions. Keys: exact_match, per_token_acc, edit_distance, log_likelihood, brier
    (per answer token, over the whole vocabulary) and subset_acc_k1.. (k1 equals exact_match).
    """
    mask = mask.bool()
    gold = [row[m].tolist() for row, m in zip(targets, mask)]
    correct = torch.tensor([exact_match(p, g) for p, g in zip(preds, gold)], dtype=torch.bool)
    table = {
        "exact_match": mean_exact_match(preds, gold),
        "per_token_acc": mean_per_token_accuracy(preds, gold),
        "edit_distance": mean_token_edit_distance(preds, gold),
        "log_likelihood": target_log_likelihood(logits, targets, mask),
        "brier": brier_score(torch.softmax(logits.double(), -1)[mask], targets[mask]),
    }
    return table | {f"subset_acc_k{k}": acc for k, acc in subset_accuracies(correct, ks).items()}
