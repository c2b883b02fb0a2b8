"""In-context function learning (`icl-functions`): Garg et al. 2022 and Yadlowsky et al. 2023.

A prompt is k pairs (x_i, f(x_i)) with x ~ N(0, I_d) and f drawn from a family; the model reads them
interleaved, one real vector per position through a linear read-in (no tokenizer):

    position 2i   : [x_i, 0]      the model's output here predicts f(x_i) from the i earlier pairs
    position 2i+1 : [0..0, f(x_i)]

so a token is d + 1 numbers (the y-slot last) and the causal mask alone keeps f(x_i) out of the
prediction at x_i. Families (config key `families`, weights `family_weights`):
- `linear`: f(x) = w.x, w ~ N(0, I_d) (Garg's convention, so E f^2 = d);
- `sparse-linear`: the same with only `sparsity` random coordinates of w non-zero;
- `sinusoid`: f(x) = sin(omega u.x), omega ~ U[freq_min, freq_max], u a random unit vector (d = 1: u = +-1);
- `relu-net`: f(x) = sum_j a_j relu(v_j.x), 100 hidden units, v_j ~ N(0, I_d), a_j ~ N(0, 2/100) (Garg's);
- out of the mixture, for evaluation only: `combination` a (w.x) + (1 - a) sin(omega u.x) (Yadlowsky's
  convex combinations, both parts drawn as above), sinusoids at a fixed frequency, and inputs scaled
  by `eval_x_scale`.

Every sample also returns the *family basis*: the features on which f is linear once the family and its
non-linear parameters (support, frequency, direction) are known, so least squares on them is the
Bayes-like reference of the issue (`grokking.analysis.icl.family_fit`). The curriculum (Garg's) grows the
active input dimensions and the prompt length in steps; inactive dimensions are zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from grokking.config import TaskConfig

FAMILIES = ("linear", "sparse-linear", "sinusoid", "relu-net")
COMBINATION_AS = (0.0, 0.25, 0.5, 0.75, 1.0)
RELU_HIDDEN = 100


@dataclass(frozen=True)
class Prompts:
    """A batch of prompts: inputs [b, n, d], targets [b, n], family basis [b, n, m] and family index [b]."""

    xs: Tensor
    ys: Tensor
    basis: Tensor
    family: Tensor

    def head(self, n: int) -> Prompts:
        """The first `n` prompts."""
        return Prompts(self.xs[:n], self.ys[:n], self.basis[:n], self.family[:n])

    def to(self, device: torch.device | str) -> Prompts:
        return Prompts(self.xs.to(device), self.ys.to(device), self.basis.to(device), self.family.to(device))


def interleave(xs: Tensor, ys: Tensor) -> Tensor:
    """The model's input [b, 2n, d+1]: x tokens [x, 0] at even positions, y tokens [0, y] at odd ones."""
    b, n, d = xs.shape
    tokens = xs.new_zeros(b, 2 * n, d + 1)
    tokens[:, 0::2, :d] = xs
    tokens[:, 1::2, d] = ys
    return tokens


def predict(model: torch.nn.Module, xs: Tensor, ys: Tensor) -> Tensor:
    """The model's prediction of every y_i from the pairs before it: [b, n]."""
    return model(interleave(xs, ys))[:, 0::2, 0]


def _unit_directions(b: int, d_active: int, d: int, gen: torch.Generator) -> Tensor:
    u = torch.zeros(b, d)
    u[:, :d_active] = torch.randn(b, d_active, generator=gen)
    return u / u.norm(dim=1, keepdim=True)


def _linear(xs: Tensor, d_active: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    w = torch.zeros(xs.shape[0], xs.shape[2])
    w[:, :d_active] = torch.randn(xs.shape[0], d_active, generator=gen)
    return torch.einsum("bnd,bd->bn", xs, w), xs


def _sparse_linear(xs: Tensor, d_active: int, sparsity: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    b, _, d = xs.shape
    s = min(sparsity, d_active)
    support = torch.rand(b, d_active, generator=gen).argsort(dim=1)[:, :s]  # s distinct active coordinates
    w = torch.zeros(b, d)
    w.scatter_(1, support, torch.randn(b, s, generator=gen))
    return torch.einsum("bnd,bd->bn", xs, w), torch.gather(xs, 2, support[:, None, :].expand(-1, xs.shape[1], -1))


def _sinusoid(xs: Tensor, d_active: int, omega: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    phase = omega[:, None] * torch.einsum("bnd,bd->bn", xs, _unit_directions(xs.shape[0], d_active, xs.shape[2], gen))
    return torch.sin(phase), torch.stack([torch.sin(phase), torch.cos(phase)], dim=-1)


def _relu_net(xs: Tensor, d_active: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    b, _, d = xs.shape
    v = torch.zeros(b, RELU_HIDDEN, d)
    v[:, :, :d_active] = torch.randn(b, RELU_HIDDEN, d_active, generator=gen)
    a = torch.randn(b, RELU_HIDDEN, generator=gen) * math.sqrt(2.0 / RELU_HIDDEN)
    hidden = torch.relu(torch.einsum("bnd,bhd->bnh", xs, v))
    a = a[:, :, None]
    return (hidden @ a)[..., 0], hidden  # the hidden units are its basis once v is known


def sample_family(
    family: str,
    xs: Tensor,
    gen: torch.Generator,
    *,
    d_active: int | None = None,
    freq_range: tuple[float, float] = (0.5, 2.0),
    sparsity: int = 3,
    a: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Targets [b, n] and family basis [b, n, m] of one function per prompt of `xs` [b, n, d].

    `family` is one of FAMILIES or `combination` (then `a` is the weight of the linear part); a sinusoid's
    frequency is drawn from `freq_range` (equal ends fix it).
    """
    b, _, d = xs.shape
    d_active = d if d_active is None else d_active
    if family == "linear":
        return _linear(xs, d_active, gen)
    if family == "sparse-linear":
        return _sparse_linear(xs, d_active, sparsity, gen)
    omega = freq_range[0] + (freq_range[1] - freq_range[0]) * torch.rand(b, generator=gen)
    if family == "sinusoid":
        return _sinusoid(xs, d_active, omega, gen)
    if family == "relu-net":
        return _relu_net(xs, d_active, gen)
    if family == "combination":
        if a is None:
            raise ValueError("a combination needs its weight a")
        lin, lin_basis = _linear(xs, d_active, gen)
        sin, sin_basis = _sinusoid(xs, d_active, omega, gen)
        return a * lin + (1 - a) * sin, torch.cat([lin_basis, sin_basis], dim=-1)
    raise ValueError(f"unknown family '{family}'")


def sample_inputs(b: int, n: int, d: int, gen: torch.Generator, d_active: int | None = None, scale: float = 1.0) -> Tensor:
    """x ~ N(0, scale^2 I) on the first `d_active` coordinates, zeros on the rest: [b, n, d]."""
    xs = torch.zeros(b, n, d)
    k = d if d_active is None else d_active
    xs[:, :, :k] = scale * torch.randn(b, n, k, generator=gen)
    return xs


@dataclass(frozen=True)
class Curriculum:
    """Garg's curriculum: active dimensions and prompt length start small and grow every `every` steps."""

    d: int
    n_points: int
    d_start: int
    points_start: int
    every: int
    d_step: int
    points_step: int

    def at(self, step: int) -> tuple[int, int]:
        """(active dimensions, prompt length) at `step`."""
        stage = step // self.every if self.every > 0 else 0
        d = min(self.d, (self.d_start or self.d) + stage * self.d_step)
        n = min(self.n_points, (self.points_start or self.n_points) + stage * self.points_step)
        return d, n


@dataclass
class ICLTask:
    """The `icl-functions` task of a config: the mixture, the curriculum and the fixed evaluation sets."""

    families: tuple[str, ...]
    weights: tuple[float, ...]
    n_dims: int
    n_points: int
    freq_range: tuple[float, float]
    sparsity: int
    curriculum: Curriculum
    eval_examples: int
    eval_x_scale: float
    data_seed: int

    @property
    def d_vocab(self) -> int:  # the read-in's input width: x and the y-slot
        return self.n_dims + 1

    @property
    def d_vocab_out(self) -> int:  # the read-out: one number
        return 1

    @property
    def n_ctx(self) -> int:
        return 2 * self.n_points

    def sample(self, batch_size: int, step: int, gen: torch.Generator) -> Prompts:
        """A training batch at `step` of the curriculum: each prompt's family drawn by the mixture weights."""
        d_active, n = self.curriculum.at(step)
        family = torch.multinomial(torch.tensor(self.weights), batch_size, replacement=True, generator=gen)
        xs = sample_inputs(batch_size, n, self.n_dims, gen, d_active)
        ys = torch.zeros(batch_size, n)
        for i, name in enumerate(self.families):
            rows = (family == i).nonzero()[:, 0]
            if len(rows):
                ys[rows] = sample_family(name, xs[rows], gen, d_active=d_active, freq_range=self.freq_range, sparsity=self.sparsity)[0]
        return Prompts(xs, ys, xs, family)  # training needs no basis

    def prompts(self, family: str, gen: torch.Generator, *, freq: float | None = None, a: float | None = None, x_scale: float = 1.0) -> Prompts:
        """`eval_examples` full-size prompts of one family (optionally a fixed frequency, a combination weight, scaled x)."""
        xs = sample_inputs(self.eval_examples, self.n_points, self.n_dims, gen, scale=x_scale)
        freqs = self.freq_range if freq is None else (freq, freq)
        ys, basis = sample_family(family, xs, gen, freq_range=freqs, sparsity=self.sparsity, a=a)
        index = self.families.index(family) if family in self.families else -1
        return Prompts(xs, ys, basis, torch.full((self.eval_examples,), index))

    def eval_sets(self, frequencies: tuple[float, ...] = ()) -> dict[str, Prompts]:
        """Fixed evaluation prompts (seeded by `data_seed`, apart from training's stream): every family of the
        mixture, the convex combinations at each a, each family with x scaled by `eval_x_scale`, and
        sinusoids at each of `frequencies`. Names: `linear`, `combination a=0.25`, `linear x2`, `sinusoid f=3`."""
        gen = torch.Generator().manual_seed(10_007 * self.data_seed + 1)
        sets = {name: self.prompts(name, gen) for name in self.families}
        if "linear" in self.families and "sinusoid" in self.families:
            sets.update({f"combination a={a:g}": self.prompts("combination", gen, a=a) for a in COMBINATION_AS})
        sets.update({f"{name} x{self.eval_x_scale:g}": self.prompts(name, gen, x_scale=self.eval_x_scale) for name in self.families})
        sets.update({f"sinusoid f={f:g}": self.prompts("sinusoid", gen, freq=f) for f in frequencies})
        return sets

    def mixture_set(self) -> Prompts:
        """The in-mixture evaluation prompts, one block per family, `eval_examples` in all (the training distribution)."""
        gen = torch.Generator().manual_seed(10_007 * self.data_seed + 2)
        counts = [round(self.eval_examples * w / sum(self.weights)) for w in self.weights]
        xs = sample_inputs(sum(counts), self.n_points, self.n_dims, gen)
        ys = torch.zeros(sum(counts), self.n_points)
        start = 0
        for name, count in zip(self.families, counts):
            ys[start : start + count] = sample_family(name, xs[start : start + count], gen, freq_range=self.freq_range, sparsity=self.sparsity)[0]
            start += count
        family = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        return Prompts(xs, ys, xs, family)


def parse_weights(families: tuple[str, ...], raw: str) -> tuple[float, ...]:
    """`family_weights` as numbers, one per family ("" = equal weights)."""
    if not raw.strip():
        return tuple(1.0 for _ in families)
    return tuple(float(w) for w in raw.split(","))


def parse_families(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def from_config(t: TaskConfig) -> ICLTask:
    """The task of a validated config."""
    families = parse_families(t.families)
    return ICLTask(
        families=families,
        weights=parse_weights(families, t.family_weights),
        n_dims=t.n_dims,
        n_points=t.n_points,
        freq_range=(t.freq_min, t.freq_max),
        sparsity=t.sparsity,
        curriculum=Curriculum(t.n_dims, t.n_points, t.d_start, t.points_start, t.curriculum_every, t.d_step, t.points_step),
        eval_examples=t.eval_examples,
        eval_x_scale=t.eval_x_scale,
        data_seed=t.data_seed,
    )
