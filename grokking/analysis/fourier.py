"""Fourier-basis progress measures for modular addition (Nanda et al. 2023), as pure tensor functions.

Conventions, fixed here and used throughout:

* Basis of R^p (`fourier_basis`): orthonormal rows, row 0 the constant 1/sqrt(p), then for
  k = 1..(p-1)/2 the row `cos k` (index 2k-1) followed by `sin k` (index 2k), i.e. cos before sin
  as in the paper. Frequency k means cos/sin(2 pi k x / p).
* Per-frequency norms (`frequency_norms`) are indexed by k: entry 0 is the constant component and
  entry k >= 1 is sqrt(|cos k|^2 + |sin k|^2). Gini coefficients use entries 1.. only, so a bias-like
  constant direction does not count as a frequency.
* Grids are over (a, b) in a-major order, i.e. `tensor.view(p, p, ...)` of the task's p^2 rows;
  logit grids are [p, p, p] = (a, b, class).
* Key frequencies (`key_frequencies`): a neuron belongs to the frequency k whose 2-D block
  {const, cos k, sin k}^2 (minus const x const) explains the largest fraction of its centred variance,
  if that fraction is >= `threshold` (0.85, the paper's value); the key set is every k claimed by at
  least `min_neurons` neurons. Cross-check (`key_frequencies_from_embedding`): the k whose W_E norm is
  at least `rel_threshold` times the largest. `select_key_frequencies` then checks that the set
  explains the final logits (restricted loss within `KEY_LOSS_FACTOR` of the test loss) and widens
  it by W_E norm when it does not, recording which rule chose each key.
* Operations: the algorithm reads the answer off cos/sin(w s) with s = a + b (`add`) or s = a - b
  (`subtract`), so the restricted/excluded logits and the cos(w(s - c)) coefficients project onto
  directions that depend on (a, b) only through s. `x2xyy2` and `random` have no such basis: for them
  the Fourier measures are not applicable (`fourier_applicable`, `NOT_APPLICABLE_NOTE`).
* Losses are cross-entropy in float64 (losses reach ~1e-7, below float32 log-softmax resolution).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor

from grokking.fast_forward import last_position_logits
from grokking.model import Transformer
from grokking.tasks.modular import ModularTask

MLP_POST_HOOK = "blocks.0.mlp.hook_post"

# The sign of b in s = a + sign * b, per operation the Fourier algorithm covers.
OPERATION_SIGNS = {"add": 1, "subtract": -1}
NOT_APPLICABLE_NOTE = (
    "Fourier measures not applicable to operation '{operation}': its answer is not a function of a + b or a - b, "
    "so no cos/sin(w(a +/- b)) directions carry it; key frequencies, restricted/excluded loss, cos coefficients "
    "and Gini are left out."
)


def fourier_applicable(operation: str) -> bool:
    """Whether the Fourier measures mean anything for `operation` (add and subtract only)."""
    return operation in OPERATION_SIGNS


def _sign(operation: str) -> int:
    if operation not in OPERATION_SIGNS:
        raise ValueError(NOT_APPLICABLE_NOTE.format(operation=operation))
    return OPERATION_SIGNS[operation]


# --- basis and transforms ---------------------------------------------------------------------------


def n_frequencies(p: int) -> int:
    """Number of non-constant frequencies, (p-1)/2 for odd p."""
    return (p - 1) // 2


@lru_cache(maxsize=8)
def _basis(p: int) -> Tensor:
    """The float64 basis, cached per p: every measure of every checkpoint reuses it (callers must not mutate)."""
    x = torch.arange(p, dtype=torch.float64)
    k = torch.arange(1, n_frequencies(p) + 1, dtype=torch.float64)
    angles = 2 * math.pi * k[:, None] * x[None, :] / p
    waves = rearrange([torch.cos(angles), torch.sin(angles)], "t k x -> (k t) x")  # cos k, sin k interleaved
    rows = torch.cat([torch.ones(1, p, dtype=torch.float64), waves])
    return rows / rows.norm(dim=1, keepdim=True)


def fourier_basis(p: int) -> tuple[Tensor, list[str]]:
    """Orthonormal Fourier basis [p, p] (rows: const, cos 1, sin 1, cos 2, ...) and the row names."""
    names = ["const"] + [f"{trig} {k}" for k in range(1, n_frequencies(p) + 1) for trig in ("cos", "sin")]
    return _basis(p).clone(), names


def fft1d(x: Tensor, dim: int = 0) -> Tensor:
    """Coefficients of `x` in the Fourier basis along `dim` (which has length p); other dims untouched."""
    basis = _basis(x.shape[dim]).to(x.dtype)
    return torch.movedim(torch.tensordot(basis, x, dims=([1], [dim])), 0, dim)


def fft2d(grid: Tensor) -> Tensor:
    """2-D coefficients of a [p, p, ...] grid over (a, b): the basis applied along both input axes."""
    return fft1d(fft1d(grid, 0), 1)


# --- weight norms and Gini ----------------------------------------------------------------------------


def frequency_norms(W: Tensor) -> Tensor:
    """Norms [(p-1)/2 + 1] of W [p, d] per frequency over its p rows: entry 0 const, entry k cos k and sin k combined.

    Why: a weight matrix that "uses" frequency k puts its mass on both cos k and sin k, with a phase
    that is arbitrary, so only their combined norm is meaningful.
    """
    row_norms = fft1d(W.detach().double(), 0).norm(dim=1)
    pairs = rearrange(row_norms[1:], "(k t) -> k t", t=2).norm(dim=1)
    return torch.cat([row_norms[:1], pairs])


def embedding_frequency_norms(model: Transformer, p: int) -> Tensor:
    """Frequency norms of W_E over the p number tokens (the `=` row is not a number and is left out)."""
    return frequency_norms(model.embed.W_E[:p])


@torch.no_grad()
def logit_map_frequency_norms(model: Transformer, p: int) -> Tensor:
    """Frequency norms of W_L = W_out @ W_U (neuron -> logit map) over the p output classes."""
    W_L = model.blocks[0].mlp.W_out @ model.W_U[:, :p]
    return frequency_norms(W_L.T)


def gini(x: Tensor) -> Tensor:
    """Hurley & Rickard Gini sparsity of non-negative values along the last dim: 0 if flat, (N-1)/N if one-hot.

    G = 1 - 2 sum_k (x_k / |x|_1) (N - k + 1/2) / N with x sorted ascending, k = 1..N. An all-zero
    vector is flat (all entries equal), so its Gini is 0, not the 0/0 of the formula.
    """
    x = x.double().sort(dim=-1).values
    n = x.shape[-1]
    weights = (n - torch.arange(1, n + 1, dtype=torch.float64) + 0.5) / n
    total = x.sum(dim=-1)
    g = 1 - 2 * (x / total.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1) * weights).sum(dim=-1)
    return torch.where(total > 0, g, 0.0)


# --- neurons and key frequencies ----------------------------------------------------------------------


@lru_cache(maxsize=8)
def _block_rows(p: int) -> Tensor:
    """[(p-1)/2, 3] basis rows {const, cos k, sin k} of each frequency k = 1..(p-1)/2."""
    k = torch.arange(1, n_frequencies(p) + 1)
    return torch.stack([torch.zeros_like(k), 2 * k - 1, 2 * k], dim=1)


def neuron_frequency_fractions(neuron_acts: Tensor) -> Tensor:
    """[d_mlp, (p-1)/2]: column k-1 is the fraction of each neuron's centred variance in frequency k's 2-D block.

    The block is {const, cos k, sin k} x {const, cos k, sin k} minus const x const (zero after
    centring); a neuron computing products like cos(ka) cos(kb) lives entirely in one block. Neurons
    with no variance (dead) get fraction 0 everywhere.
    """
    p = neuron_acts.shape[0]
    acts = neuron_acts.detach().double()
    power = fft2d(acts - acts.mean(dim=(0, 1))).pow(2)  # [p, p, d_mlp]
    rows = _block_rows(p)
    in_block = power[rows[:, :, None], rows[:, None, :]].sum(dim=(1, 2)) - power[0, 0]  # [n_freqs, d_mlp]
    total = power.sum(dim=(0, 1))
    return (in_block / total.clamp_min(torch.finfo(torch.float64).tiny)).T


def neuron_clusters(fractions: Tensor, threshold: float = 0.85) -> Tensor:
    """Each neuron's best frequency k (1-based), or -1 when no single frequency explains >= `threshold`."""
    best_fraction, best = fractions.max(dim=1)
    return torch.where(best_fraction >= threshold, best + 1, torch.full_like(best, -1))


def neuron_activations(model: Transformer, task: ModularTask) -> Tensor:
    """Last-position MLP activations [p, p, d_mlp] over all inputs, through the model's hook."""
    with torch.no_grad():
        _, cache = model.run_with_cache(task.tokens, names_filter=MLP_POST_HOOK)
    return cache[MLP_POST_HOOK][:, -1].view(task.p, task.p, -1)


def key_frequencies(model: Transformer, task: ModularTask, threshold: float = 0.85, min_neurons: int = 5) -> list[int]:
    """Sorted distinct frequencies that at least `min_neurons` neurons cluster on (run on the *final* model).

    Why a count: a lone neuron can land on a frequency by chance; a frequency the circuit uses
    recruits a cluster (tens of neurons in the paper's 512). 5 is 1% of 512.
    """
    clusters = neuron_clusters(neuron_frequency_fractions(neuron_activations(model, task)), threshold)
    ks, counts = torch.unique(clusters[clusters > 0], return_counts=True)
    return sorted(int(k) for k in ks[counts >= min_neurons])


def key_frequencies_from_embedding(norms: Tensor, rel_threshold: float = 0.5) -> list[int]:
    """Frequencies whose W_E norm (from `frequency_norms`, const entry ignored) is >= rel_threshold * the largest.

    The cross-check route: the embedding of a grokked model is sparse in frequency, and its large
    frequencies should match the neuron clusters.
    """
    freq_norms = norms[1:]
    return sorted(int(k) + 1 for k in torch.nonzero(freq_norms >= rel_threshold * freq_norms.max()).flatten())


# --- restricted and excluded logits -------------------------------------------------------------------
#
# The directions cos(w s) and sin(w s), s = a + b or a - b, depend on (a, b) only through s mod p, so a
# frequency's component of the logits is a [p (s), p (class)] table; indexing it with `sum_index`
# gives the [p, p, p] grid. Losses use the tables directly: p^2 log-softmaxes instead of p^3 per
# frequency, which keeps a checkpoint's measures fast. Labels may be anything (gathered per input).
# `operation` is "add" (the default, s = a + b) or "subtract" (s = a - b).


@lru_cache(maxsize=8)
def sum_index(p: int, operation: str = "add") -> Tensor:
    """[p, p] grid of s = (a +/- b) mod p: maps an input to its row of a per-s table (cached: do not mutate)."""
    return (torch.arange(p)[:, None] + _sign(operation) * torch.arange(p)[None, :]) % p


@lru_cache(maxsize=64)
def _sum_directions(p: int, freqs: tuple[int, ...], operation: str = "add") -> Tensor:
    """[n_freqs, 2, p^2] unit directions cos(w s), sin(w s) over the a-major grid, built in the 2-D basis."""
    sign = _sign(operation)
    basis = _basis(p)
    cos, sin = basis[[2 * w - 1 for w in freqs]], basis[[2 * w for w in freqs]]  # [n_freqs, p]

    def outer(u: Tensor, v: Tensor) -> Tensor:
        return einsum(u, v, "f a, f b -> f a b")

    cos_s = (outer(cos, cos) - sign * outer(sin, sin)) / math.sqrt(2)  # cos(wa) cos(wb) -/+ sin(wa) sin(wb)
    sin_s = (outer(sin, cos) + sign * outer(cos, sin)) / math.sqrt(2)  # sin(wa) cos(wb) +/- cos(wa) sin(wb)
    return rearrange([cos_s, sin_s], "t f a b -> f t (a b)")


def _sum_coefficients(logits_grid: Tensor, freqs: list[int], operation: str = "add") -> Tensor:
    """[n_freqs, 2, p]: per class, the projection of the logits onto the cos/sin(w s) directions."""
    p = logits_grid.shape[0]
    directions = _sum_directions(p, tuple(freqs), operation)
    return einsum(directions, logits_grid.double().reshape(p * p, -1), "f t g, g c -> f t c")


def sum_frequency_components(logits_grid: Tensor, freqs: list[int], operation: str = "add") -> Tensor:
    """[n_freqs, p (s), p (class)]: per w, the logits' part along cos(w s) and sin(w s), as a table over s."""
    p = logits_grid.shape[0]
    directions = _sum_directions(p, tuple(freqs), operation)
    by_sum = rearrange(directions, "f t (a b) -> f t a b", a=p)[..., 0]  # the value at (a, b) = (s, 0)
    return einsum(by_sum, _sum_coefficients(logits_grid, freqs, operation), "f t s, f t c -> f s c")


def restricted_logits(logits_grid: Tensor, freqs: list[int], operation: str = "add") -> Tensor:
    """[p, p, p]: only the key-frequency components plus each class's mean logit, what the circuit alone predicts."""
    logits = logits_grid.double()
    table = sum_frequency_components(logits, freqs, operation).sum(0) + logits.mean(dim=(0, 1))
    return table[sum_index(logits.shape[0], operation)]


def excluded_logits(logits_grid: Tensor, freqs: list[int], operation: str = "add") -> Tensor:
    """[p, p, p]: the logits minus the key-frequency components, what the network computes without the circuit."""
    logits = logits_grid.double()
    return logits - sum_frequency_components(logits, freqs, operation).sum(0)[sum_index(logits.shape[0], operation)]


def cross_entropy64(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean float64 cross-entropy of logits [..., n, classes] against labels [n]; leading dims are kept."""
    log_probs = F.log_softmax(logits.double(), dim=-1)
    return -log_probs.gather(-1, labels.expand(log_probs.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)


def _table_loss(tables: Tensor, labels: Tensor, operation: str) -> Tensor:
    """Mean loss over all p^2 inputs of per-s logit tables [..., p, p]: input (a, b) reads row s."""
    log_probs = F.log_softmax(tables, dim=-1)
    return -log_probs[..., sum_index(tables.shape[-2], operation).reshape(-1), labels.reshape(-1)].mean(-1)


def _restricted_losses(logits_grid: Tensor, components: Tensor, labels: Tensor, operation: str) -> Tensor:
    """Loss over all inputs of component tables [..., p, p] plus the class means (leading dims kept)."""
    return _table_loss(components + logits_grid.mean(dim=(0, 1)), labels, operation)


def _excluded_losses(logits_grid: Tensor, components: Tensor, labels: Tensor, train_mask: Tensor, operation: str) -> Tensor:
    """Training loss of the logits minus component tables [..., p, p] (leading dims kept)."""
    p = logits_grid.shape[0]
    mask = train_mask.reshape(-1)
    rows = logits_grid.reshape(p * p, -1)[mask]
    return cross_entropy64(rows - components[..., sum_index(p, operation).reshape(-1)[mask], :], labels.reshape(-1)[mask])


def restricted_loss(logits_grid: Tensor, labels: Tensor, freqs: list[int], operation: str = "add") -> float:
    """Loss of the restricted logits over ALL inputs: low once the circuit alone solves the task."""
    logits = logits_grid.double()
    return _restricted_losses(logits, sum_frequency_components(logits, freqs, operation).sum(0), labels, operation).item()


def excluded_loss(logits_grid: Tensor, labels: Tensor, train_mask: Tensor, freqs: list[int], operation: str = "add") -> float:
    """Loss of the excluded logits on the TRAINING inputs: rises as the circuit replaces memorisation."""
    logits = logits_grid.double()
    components = sum_frequency_components(logits, freqs, operation).sum(0)
    return _excluded_losses(logits, components, labels, train_mask, operation).item()


def restricted_loss_per_freq(logits_grid: Tensor, labels: Tensor, freqs: list[int], operation: str = "add") -> Tensor:
    """[n_freqs]: restricted loss keeping one key frequency at a time (how much each carries alone)."""
    logits = logits_grid.double()
    return _restricted_losses(logits, sum_frequency_components(logits, freqs, operation), labels, operation)


def excluded_loss_per_freq(logits_grid: Tensor, labels: Tensor, train_mask: Tensor, freqs: list[int], operation: str = "add") -> Tensor:
    """[n_freqs]: training loss after removing one key frequency at a time."""
    logits = logits_grid.double()
    return _excluded_losses(logits, sum_frequency_components(logits, freqs, operation), labels, train_mask, operation)


def cos_coefficients(logits_grid: Tensor, freqs: list[int], operation: str = "add") -> tuple[Tensor, Tensor]:
    """Per w: the coefficient of the unit direction cos(w(s-c)) over (a, b, c), and the variance fraction it explains.

    cos(w(s-c)), s = a + b or a - b, is the algorithm's output term, so its coefficient tracks the
    circuit's strength. Variance is taken after removing each input's mean over classes, the part
    softmax ignores (the direction has no such part). The direction is (cos_s x cos c + sin_s x sin c)/sqrt2,
    so the coefficient comes from the per-class s coefficients without building a p^3 tensor.
    """
    p = logits_grid.shape[0]
    logits = logits_grid.double()
    basis = _basis(p)
    class_dirs = torch.stack([basis[[2 * w - 1 for w in freqs]], basis[[2 * w for w in freqs]]], dim=1)  # [f, 2, p]
    coefs = einsum(_sum_coefficients(logits, freqs, operation), class_dirs, "f t c, f t c -> f") / math.sqrt(2)
    variance = (logits - logits.mean(dim=-1, keepdim=True)).pow(2).sum()
    return coefs, coefs.pow(2) / variance


# --- key-frequency selection that explains the logits -------------------------------------------------------

# After selection, the restricted loss of the final checkpoint should be at most this factor times its
# test loss (both over the p answer classes). A complete key set keeps the circuit's whole margin, and
# on a grokked run the restricted loss then sits within a few times the test loss (measured on
# nanda-p113 and quick, docs/results/analysis-fidelity.md); a missing key frequency costs orders of
# magnitude (nanda-p113 seed 0 without 54: 0.52 against 1.7e-7).
KEY_LOSS_FACTOR = 10.0
# Widening stops at frequencies whose W_E norm is below this fraction of the largest: beyond them the
# embedding carries no frequency the circuit could read.
WIDEN_MIN_REL_NORM = 0.1


@dataclass(frozen=True)
class KeySelection:
    """The chosen key frequencies, the rule that chose each, and the check on the final checkpoint."""

    freqs: list[int]
    rules: dict[int, str]  # "neurons" (a cluster of >= min_neurons) or "embedding norm" (added by widening)
    restricted_loss: float  # of the final checkpoint with `freqs`, over all inputs
    test_loss: float  # of the final checkpoint, over the test inputs
    factor: float
    generalises: bool  # test loss below chance, ln p: only then can a circuit explain the logits
    explained: bool  # generalises and restricted_loss <= factor * test_loss

    def to_dict(self) -> dict:
        return {
            "key_frequency_rules": {str(k): rule for k, rule in self.rules.items()},
            "key_frequency_check": {
                "restricted_loss": self.restricted_loss,
                "test_loss": self.test_loss,
                "factor": self.factor,
                "generalises": self.generalises,
                "explained": self.explained,
            },
        }


@torch.no_grad()
def select_key_frequencies(
    model: Transformer, task: ModularTask, factor: float = KEY_LOSS_FACTOR, min_rel_norm: float = WIDEN_MIN_REL_NORM, **cluster_kwargs
) -> KeySelection:
    """Key frequencies of the final model: neuron clusters first, then W_E frequencies by norm until they explain the logits.

    Why widen: a frequency can carry the logits with fewer than `min_neurons` clean neurons (its
    neurons mix two frequencies), and a restricted loss far above the test loss says the set misses
    part of the circuit. Candidates are added one at a time in decreasing W_E norm, while the restricted
    loss exceeds `factor` x test loss and the candidate's norm is >= `min_rel_norm` x the largest.
    A final model that does not beat chance on the test set has no circuit to explain: its set is the
    neuron rule's alone, with `generalises` and `explained` False.
    """
    p, operation = task.p, task.operation
    logits = last_position_logits(model, task.tokens)[:, :p].double()
    grid, labels = logits.view(p, p, p), task.labels.view(p, p)
    test_loss = cross_entropy64(logits[task.test_idx], task.labels[task.test_idx]).item()
    freqs = key_frequencies(model, task, **cluster_kwargs)
    rules = {k: "neurons" for k in freqs}
    norms = embedding_frequency_norms(model, p)[1:]
    candidates = [int(k) + 1 for k in norms.argsort(descending=True) if norms[k] >= min_rel_norm * norms.max()]
    loss = restricted_loss(grid, labels, freqs, operation)
    if test_loss >= math.log(p):
        return KeySelection(freqs, rules, loss, test_loss, factor, False, False)
    for k in candidates:
        if loss <= factor * test_loss:
            break
        if k in rules:
            continue
        freqs = sorted([*freqs, k])
        rules[k] = "embedding norm"
        loss = restricted_loss(grid, labels, freqs, operation)
    return KeySelection(freqs, dict(sorted(rules.items())), loss, test_loss, factor, True, loss <= factor * test_loss)


# --- per-checkpoint table -----------------------------------------------------------------------------


@torch.no_grad()
def checkpoint_measures(model: Transformer, task: ModularTask, key_freqs: list[int], logits: Tensor | None = None) -> dict[str, float]:
    """Every Fourier progress measure of one checkpoint from one forward pass (a row of the per-checkpoint table).

    `logits` [p^2, d_vocab_out] are the last-position logits over all inputs when the caller already has them.
    Models with p + 1 outputs (the paper's own code) are measured on the p answer classes, as the paper did
    (the analysis losses in `grokking.analysis.progress` use the same p classes).
    Raises ValueError for an operation without a Fourier basis (see `fourier_applicable`).
    """
    p, operation = task.p, task.operation
    _sign(operation)
    if logits is None:
        logits = last_position_logits(model, task.tokens)
    grid = logits[:, :p].double().view(p, p, p)
    labels, train_mask = task.labels.view(p, p), task.is_train_grid()
    components = sum_frequency_components(grid, key_freqs, operation)  # [n_freqs, p (s), p (class)]
    measures = {
        "restricted_loss": _restricted_losses(grid, components.sum(0), labels, operation).item(),
        "excluded_loss": _excluded_losses(grid, components.sum(0), labels, train_mask, operation).item(),
        "gini_W_E": gini(embedding_frequency_norms(model, p)[1:]).item(),
        "gini_W_L": gini(logit_map_frequency_norms(model, p)[1:]).item(),
    }
    restricted_k = _restricted_losses(grid, components, labels, operation)
    excluded_k = _excluded_losses(grid, components, labels, train_mask, operation)
    cos_coefs, cos_fracs = cos_coefficients(grid, key_freqs, operation)
    for i, w in enumerate(key_freqs):
        measures[f"restricted_loss_k{w}"] = restricted_k[i].item()
        measures[f"excluded_loss_k{w}"] = excluded_k[i].item()
        measures[f"cos_coef_k{w}"] = cos_coefs[i].item()
        measures[f"cos_frac_k{w}"] = cos_fracs[i].item()
    return measures
