"""Many seeds of one configuration trained at once, as one batched model (`grokking train PRESET --batch-seeds N`).

How: every parameter is stacked over a leading seed dimension (`torch.func.stack_module_state`), and one
step runs the solo objective of every seed under `torch.func.vmap` + `functional_call` (for modular runs
that is `ModularObjective.batch_loss`, i.e. the table fast path of fast_forward.py, and its float64
loss), sums the per-seed losses (so each slice gets exactly its own gradient), clips each seed's
gradient on its own, and takes one AdamW step over the stacked tensors. AdamW and the gradient filter act elementwise and
every seed draws its minibatches from its own generator, so each seed follows its solo run (tested).

Each seed stays a solo `Trainer` (`_Member`) whose parameters are views into the stacked tensors and
whose AdamW state is its slice of the batch's, so the solo code writes evaluation rows, checkpoints and
resume files into an ordinary run directory per seed, and `train.drive` runs the same loop as a solo run.

Dropout is refused: a solo run draws its dropout masks from the process RNG in its own order, which one
vmap over all seeds cannot reproduce, and batched seeds would silently stop matching their solo runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from statistics import mean
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from grokking.config import RunConfig
from grokking.errors import UserError
from grokking.grad_filter import make_filter
from grokking.objectives import LMObjective, next_token_loss_and_acc, trim_to_longest
from grokking.precision import autocast, describe
from grokking.store import RunDir
from grokking.tasks.registry import Task, build_task
from grokking.train import Trainer, adamw, drive, load_existing, optimizer_step, removed_on_failure, resolve_device

# On a CPU one vmap over every seed makes each activation N times larger than the caches, so seeds are
# vmapped a few at a time (`vmap(chunk_size=...)`): as many as keep the widest activation (examples x d_mlp)
# under this many floats, which picks 2 for nanda-p113 and 4 for quick. Measured with 8 seeds on the lab's
# CPU (2 threads, load ~1.5), ms/step with 1/2/4/8 seeds per vmap: nanda-p113 fp32 281/279/296/336,
# bf16 181/175/195/239; quick fp32 93/82/79/80, bf16 69/59/56/59.
CPU_CHUNK_FLOATS = 1 << 22


class _Member(Trainer):
    """One seed of a batch: a solo trainer whose AdamW state is its slice of the batch's optimizer."""

    batch: BatchedTrainer
    index: int

    def __init__(self, cfg: RunConfig, run: RunDir, device: torch.device, task: Task):
        super().__init__(cfg, run, device, task)
        self.loaded_moments: dict[str, dict[str, Tensor]] = {}
        self.loaded_filter: dict[str, Tensor] = {}

    def _moments(self) -> dict[str, dict[str, Tensor]]:
        moments = {}
        for name, stacked in self.batch.params.items():
            state = self.batch.optimizer.state.get(stacked)
            if state:  # `step` is one scalar shared by every seed
                moments[name] = {key: value if value.dim() == 0 else value[self.index] for key, value in state.items()}
        return moments

    def _load_moments(self, moments: dict[str, dict[str, Tensor]]) -> None:
        self.loaded_moments = moments  # stacked into the batch's AdamW when the batch is built

    def _filter_state(self) -> dict[str, Tensor]:
        batch_filter = self.batch.grad_filter
        return batch_filter.seed_state(self.index) if batch_filter is not None else {}

    def _load_filter(self, tensors: dict[str, Tensor]) -> None:
        self.loaded_filter = tensors  # stacked into the batch's filter when the batch is built


class _Bound(nn.Module):
    """`fn(model, *args)` as a module's forward, so `functional_call` can run it on one seed's weights."""

    def __init__(self, model: nn.Module, fn: Callable[..., Any]):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, *args: Any) -> Any:
        return self.fn(self.model, *args)


class BatchedTrainer:
    """Seeds of one configuration, stepped together; `members` write their own run directories."""

    def __init__(self, members: list[_Member], member_chunk: int | None = None):
        self.members = members
        self.cfg, self.device, self.dtype = members[0].cfg, members[0].device, members[0].dtype
        self.step = members[0].step
        self.params, _ = stack_module_state([m.model for m in members])
        for index, member in enumerate(members):
            for name, param in member.model.named_parameters():
                param.data = self.params[name].detach()[index]  # a view: the solo code sees the seed's live weights
            member.batch, member.index = self, index
        tr = self.cfg.train
        self.optimizer = adamw(self.params.values(), tr)
        if members[0].loaded_moments:
            self._stack_moments()
        self.grad_filter = make_filter(tr, self.params)  # elementwise, so each seed's slice is its solo filter
        if self.grad_filter is not None and members[0].loaded_filter:
            self.grad_filter.load_seeds([m.loaded_filter for m in members])
        self.chunk = member_chunk or _default_chunk(members)
        self.objective = members[0].objective  # every seed's objective holds the same data
        self.lm = isinstance(self.objective, LMObjective)
        self.bound = _Bound(members[0].model, (lambda model, tokens: model(tokens)) if self.lm else self._modular_loss)

    def _stack_moments(self) -> None:
        state = {}
        for index, name in enumerate(self.params):
            per_seed = [m.loaded_moments[name] for m in self.members]
            state[index] = {"step": per_seed[0]["step"], **{key: torch.stack([s[key] for s in per_seed]) for key in ("exp_avg", "exp_avg_sq")}}
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        for member in self.members:
            member.loaded_moments = {}

    # -- train.Loop -----------------------------------------------------------------------------
    def step_loss(self) -> tuple[Tensor, list[dict[str, Tensor]] | None]:
        """The sum of the seeds' losses, and each seed's free train metrics (full-batch fp32 modular runs)."""
        batches = [m.objective.sample(m.generator) for m in self.members]
        if self.lm:
            return self._lm_loss(torch.stack(batches)), None
        idx = None if batches[0] is None else torch.stack(batches)
        losses, metrics = vmap(self._seed_call, in_dims=(0, None if idx is None else 0), chunk_size=self.chunk)(self.params, idx)
        per_seed = [{k: v[i] for k, v in metrics.items()} for i in range(len(self.members))] if metrics else None
        return losses.sum(), per_seed

    def _modular_loss(self, model: nn.Module, idx: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        loss, metrics = self.objective.batch_loss(model, idx)
        return loss, metrics or {}  # vmap returns tensors only: {} stands for "no free metrics"

    def _seed_call(self, params: dict[str, Tensor], *args: Any) -> Any:
        return functional_call(self.bound, {f"model.{name}": value for name, value in params.items()}, args)

    def _lm_loss(self, idx: Tensor) -> Tensor:
        """Every seed's forward on a common trimmed length (causal: its own shorter trim changes no logit it scores)."""
        objective = self.objective
        assert isinstance(objective, LMObjective)
        tokens, mask = trim_to_longest(objective.tokens[idx], objective.loss_mask[idx])
        with autocast(self.dtype, self.device):
            logits = vmap(self._seed_call, chunk_size=self.chunk)(self.params, tokens)
            losses = [next_token_loss_and_acc(logits[k], tokens[k], mask[k])[0] for k in range(len(self.members))]
        return torch.stack(losses).sum()

    def record(self, train_metrics: list[dict[str, Tensor]] | None) -> str:
        for index, member in enumerate(self.members):
            member.record(None if train_metrics is None else train_metrics[index])
        return _postfix([m.last_row for m in self.members if m.last_row])

    def checkpoint(self) -> None:
        for member in self.members:
            member.checkpoint()

    def save_resume(self) -> None:
        for member in self.members:
            member.save_resume()

    def update(self, loss: Tensor) -> None:
        tr = self.cfg.train
        optimizer_step(self.optimizer, loss, self.step, tr, lambda: clip_per_seed(list(self.params.values()), tr.grad_clip), self.grad_filter)
        self.step += 1
        for member in self.members:
            member.step += 1

    def fit(self, progress: bool = True) -> None:
        for member in self.members:
            member.prepare_fit()
        drive(self, self.cfg.train, self.cfg.preset or "train", _where(self.members), progress)


def clip_per_seed(params: list[Tensor], max_norm: float) -> None:
    """`clip_grad_norm_` for each seed's slice (dim 0) on its own: one seed's large gradient never shrinks another's.

    Same arithmetic as the solo clip (PyTorch's total norm, then a clamped scale), so it matches bit for bit.
    """
    grads = [p.grad for p in params if p.grad is not None]
    for seed in range(len(grads[0])):
        slices = [g[seed] for g in grads]
        coef = torch.clamp(max_norm / (torch.nn.utils.get_total_norm(slices) + 1e-6), max=1.0)
        for g in slices:
            g.mul_(coef)


def _default_chunk(members: Sequence[Trainer]) -> int | None:
    """Seeds per vmap: all of them on a GPU; on a CPU, even chunks whose widest activation stays cache-sized."""
    member = members[0]
    if member.device.type != "cpu":
        return None
    tr, objective = member.cfg.train, member.objective
    if isinstance(objective, LMObjective):
        examples = tr.batch_size * objective.tokens.shape[1]
    else:
        examples = len(objective.train_labels) if objective.full_batch else tr.batch_size
    most = max(1, CPU_CHUNK_FLOATS // max(1, examples * member.cfg.model.d_mlp))
    return -(-len(members) // -(-len(members) // most))  # ceil(n / number of chunks)


def _postfix(rows: list[dict[str, float]]) -> str:
    test = [r["test_acc"] for r in rows]
    text = f"test acc mean {mean(test):.0%} min {min(test):.0%}, train loss max {max(r['train_loss'] for r in rows):.2e}"
    if "gen_acc" in rows[0]:
        text += f", gen acc mean {mean(r['gen_acc'] for r in rows):.0%}"
    return text


def _where(members: Sequence[Trainer]) -> str:
    paths = [str(m.run.path) for m in members]
    return paths[0] if len(paths) == 1 else f"{len(paths)} run directories ({paths[0]} ... {paths[-1]})"


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """`cfg` with another init seed: the config one seed's solo run would have."""
    member = RunConfig.from_dict(cfg.to_dict())
    member.train.seed = seed
    return member


def default_outs(preset: str, seeds: Sequence[int], out: Path | None = None) -> list[Path]:
    """Where `grokking train --batch-seeds` puts each seed: OUT/seed{s}, or checkpoints/PRESET-seed{s} as a solo run would."""
    return [out / f"seed{s}" if out is not None else Path("checkpoints") / f"{preset}-seed{s}" for s in seeds]


def open_batch(
    cfg: RunConfig,
    seeds: Sequence[int],
    outs: Sequence[str | Path],
    fresh: bool = False,
    member_chunk: int | None = None,
    held: ExitStack | None = None,
) -> tuple[list[Trainer], BatchedTrainer | None]:
    """Every seed's trainer, resumed from its run directory, and the batch of those still to train (None: all done).

    Seeds whose directory already holds the finished run are left out of the batch; the others must be at
    one step (they are, unless some were trained apart). With `held`, every seed's run directory is locked
    (one writer each, as `train` does) until `held` closes.
    """
    cfg.validate()
    if len(seeds) < 1:
        raise UserError(f"--batch-seeds must be at least 1, got {len(seeds)}")
    if len(set(seeds)) != len(seeds) or len(outs) != len(seeds) or len({Path(o).resolve() for o in outs}) != len(outs):
        raise UserError("batched seeds need distinct seeds, each with its own run directory")
    if cfg.model.dropout:
        raise UserError(
            f"--batch-seeds needs dropout=0 (got {cfg.model.dropout}): batched seeds could not draw the "
            "dropout masks of their solo runs; train these seeds one by one"
        )
    device = resolve_device(cfg.train.device)
    runs = [RunDir(out) for out in outs]
    with removed_on_failure([run.path for run in runs]):
        if held is not None:
            for run in runs:
                held.enter_context(run.locked("`grokking train --batch-seeds`"))
        if fresh:
            for run in runs:
                if run.exists():
                    run.clear()
        task = build_task(cfg)  # built once for every seed; each member's config gets its sizes (Trainer: `sized`)
        members = [_Member(seed_config(cfg, seed), run, device, task) for seed, run in zip(seeds, runs)]
        for member in members:
            load_existing(member)
        active = _to_train(members)
        for member in active:
            member.run.path.mkdir(parents=True, exist_ok=True)
            member.run.write_config(member.cfg)
    return list(members), BatchedTrainer(active, member_chunk) if active else None


def train_batched(
    cfg: RunConfig, seeds: Sequence[int], outs: Sequence[str | Path], fresh: bool = False, progress: bool = True, member_chunk: int | None = None
) -> list[Trainer]:
    """Train `cfg` once per seed, batched, one run directory per seed; re-running resumes every seed.

    Returns every seed's trainer (`.run`, `.last_row`, `.elapsed`), finished ones included (see `open_batch`).
    """
    with ExitStack() as held:
        return _train_open_batch(cfg, *open_batch(cfg, seeds, outs, fresh, member_chunk, held), progress)


def _train_open_batch(cfg: RunConfig, members: list[Trainer], batch: BatchedTrainer | None, progress: bool) -> list[Trainer]:
    if progress:
        for member in members:
            if batch is None or member not in batch.members:
                print(f"seed {member.cfg.train.seed}: already trained to step {member.step} -> {member.run.path}", flush=True)
    if batch is None:
        return members
    if progress:
        state = f"resuming at step {batch.step}" if batch.step else "starting"
        print(
            f"{cfg.preset or 'run'}: {len(batch.members)} seeds batched ({', '.join(str(m.cfg.train.seed) for m in batch.members)}), "
            f"{state} on {batch.device} in {describe(batch.dtype)} -> {_where(batch.members)}",
            flush=True,
        )
    start = time.perf_counter()
    batch.fit(progress=progress)
    elapsed = time.perf_counter() - start
    for member in batch.members:
        member.elapsed = elapsed
    return members


def _to_train(members: list[_Member]) -> list[_Member]:
    """The seeds still to train; they must all be at one step, since they share every update from now on."""
    steps = members[0].cfg.train.steps
    active = [m for m in members if m.step < steps]
    if len({m.step for m in active}) > 1:
        where = ", ".join(f"{m.run.path} at step {m.step}" for m in active)
        raise UserError(f"batched seeds must resume from one step, but {where}; finish them one by one with `grokking train`")
    return active
