"""The training loop: AdamW with warm-up, evaluation on a cadence, dense checkpoints, exact resume.

Step s means "the weights after s updates". Metrics and checkpoints at step s describe those weights,
so `step_0000000` is the initialisation and the last checkpoint is at `steps`. The resume file holds
the weights, AdamW moments, RNG states and the gradient filter's state (if any) at its step; a resumed
run is bit-identical on CPU to one that was never stopped (tested). Ctrl-C (or SIGTERM) finishes the
current update, saves the resume state and exits; SIGKILL loses at most the updates since the last checkpoint.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from grokking.allocator import keep_freed_memory
from grokking.config import RunConfig, TrainConfig
from grokking.errors import UserError
from grokking.families import family_of
from grokking.grad_filter import GradFilter, filter_tensors, make_filter
from grokking.model import Transformer, checkpoint_tensors
from grokking.objectives import Objective
from grokking.precision import describe, resolve_precision, subnormals_flushed
from grokking.store import RunDir
from grokking.tasks.registry import Task, build_task, sized


class TrainingInterrupted(Exception):
    """Raised after a clean stop on Ctrl-C / SIGTERM; the run can be resumed."""

    def __init__(self, run_dir: Path | str, step: int):
        super().__init__(f"interrupted at step {step}; state saved in {run_dir}. Re-run the same command to resume.")
        self.step = step


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def build_model(cfg: RunConfig, device: torch.device | str = "cpu") -> Transformer:
    """The model at initialisation; the init seed is `seed`, independent of the data split."""
    torch.manual_seed(cfg.train.seed)
    return Transformer(cfg.model).to(device)


def lr_at(step: int, tr: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then constant (Nanda et al.) or linear decay to 0 (Murty et al.)."""
    if step < tr.warmup_steps:
        return tr.lr * (step + 1) / tr.warmup_steps
    if tr.lr_schedule == "linear":
        return tr.lr * max(0.0, (tr.steps - step) / max(1, tr.steps - tr.warmup_steps))
    return tr.lr


def is_checkpoint_step(step: int, tr: TrainConfig) -> bool:
    dense = tr.dense_checkpoint_every > 0 and step < tr.dense_until and step % tr.dense_checkpoint_every == 0
    return dense or step % tr.checkpoint_every == 0 or step == tr.steps


@contextmanager
def _stop_requests() -> Iterator[list[bool]]:
    """Turn SIGINT/SIGTERM into a flag checked between updates, so a stop never lands mid-update."""
    flag = [False]

    def handler(signum: int, frame: object) -> None:
        flag[0] = True

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Loop(Protocol):
    """What `drive` runs: one run (`Trainer`) or many seeds at once (`grokking.batched.BatchedTrainer`)."""

    step: int

    def step_loss(self) -> tuple[torch.Tensor, Any]:
        """The loss to minimise now and the train metrics it gives for free (or None)."""

    def record(self, train_metrics: Any) -> str:
        """Evaluate and append this step's metrics row(s); returns the progress-bar text."""

    def checkpoint(self) -> None: ...

    def save_resume(self) -> None: ...

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step from `loss`, then advance `step`."""


def drive(loop: Loop, tr: TrainConfig, desc: str, where: Path | str, progress: bool) -> None:
    """Train from `loop.step` to `tr.steps`: evaluate on the cadence, checkpoint on the schedule, stop between updates.

    Written once for solo and batched training, so both write the same rows and checkpoints at the same steps.
    """
    bar = tqdm(total=tr.steps, initial=loop.step, desc=desc, unit="step", disable=not progress, dynamic_ncols=True, mininterval=0.5)
    with _stop_requests() as stop, bar, subnormals_flushed():
        while True:
            if stop[0]:
                loop.save_resume()
                raise TrainingInterrupted(where, loop.step)
            evaluating = loop.step % tr.eval_every == 0 or loop.step == tr.steps
            if loop.step == tr.steps:
                loop.record(None)
                if is_checkpoint_step(loop.step, tr):
                    loop.checkpoint()
                break
            if is_checkpoint_step(loop.step, tr):
                loop.checkpoint()  # before the step draws its minibatch and dropout masks, so a resume replays them
            loss, train_metrics = loop.step_loss()
            if evaluating:
                bar.set_postfix_str(loop.record(train_metrics), refresh=False)
            loop.update(loss)
            bar.update(1)


def adamw(params: Iterable[torch.Tensor], tr: TrainConfig) -> torch.optim.AdamW:
    """The run's AdamW, fused: one kernel per step over all parameters instead of the default's many small ones
    (`benchmarks/lm_step_time.py --optimizer` times both). Solo and batched runs both use it, so a seed's slice
    of a batch takes the same elementwise update as its solo run."""
    return torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay, betas=tr.betas, fused=True)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, step: int, tr: TrainConfig, clip: Callable[[], None], grad_filter: GradFilter | None = None
) -> None:
    """Backward, the gradient filter (if any), gradient clipping (`clip`, called only when `grad_clip` is set)
    and one AdamW step at `step`'s lr. The filter comes before clipping, so `grad_clip` bounds the step taken."""
    for group in optimizer.param_groups:
        group["lr"] = lr_at(step, tr)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_filter is not None:
        grad_filter()
    if tr.grad_clip:
        clip()
    optimizer.step()


class Trainer:
    """One run: builds task, model and optimiser from a config and drives them through the loop."""

    def __init__(self, cfg: RunConfig, run: RunDir, device: torch.device, task: Task | None = None):
        """`task`: data already built for this config (seeds trained together share one copy). `self.cfg` is
        `cfg` with the task's vocabulary and context sizes: the config the model is built from and config.json records."""
        keep_freed_memory()
        self.run, self.device = run, device
        self.task = task if task is not None else build_task(cfg)
        self.cfg = sized(cfg, self.task)
        self.model = build_model(self.cfg, device)
        self.dtype = resolve_precision(cfg.train.precision, device)
        objective = family_of(cfg.task.task).resolve("objective")
        self.objective: Objective = objective(self.task, cfg.train.batch_size, device, self.dtype)
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.step = 0
        self.elapsed = 0.0
        self.last_row: dict[str, float] | None = None

    @cached_property
    def optimizer(self) -> torch.optim.AdamW:
        """Built on first use: a seed trained in a batch never builds its own (the batch's AdamW holds its state)."""
        return adamw(self.model.parameters(), self.cfg.train)

    @cached_property
    def grad_filter(self) -> GradFilter | None:
        """The Grokfast filter (None for `grad_filter=none`); built on first use, as the optimizer is."""
        return make_filter(self.cfg.train, dict(self.model.named_parameters()))

    # -- resume state ---------------------------------------------------------------------------
    def _param_names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters()]

    def _moments(self) -> dict[str, dict[str, torch.Tensor]]:
        """AdamW's state by parameter name (`step`, `exp_avg`, `exp_avg_sq`): the resume file's `opt.*` tensors."""
        state = self.optimizer.state_dict()["state"]
        return {name: state[index] for index, name in enumerate(self._param_names()) if index in state}

    def _load_moments(self, moments: dict[str, dict[str, torch.Tensor]]) -> None:
        state = {index: moments[name] for index, name in enumerate(self._param_names()) if name in moments}
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})

    def _filter_state(self) -> dict[str, torch.Tensor]:
        """The gradient filter's state: the resume file's `filter.*` tensors (none without a filter)."""
        return self.grad_filter.state() if self.grad_filter is not None else {}

    def _load_filter(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.grad_filter is not None:
            self.grad_filter.load(tensors)

    def save_resume(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for name, moments in self._moments().items():
            for key, value in moments.items():
                tensors[f"opt.{name}.{key}"] = torch.as_tensor(value)
        tensors.update(self._filter_state())
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batch"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        self.run.write_resume(tensors, {"step": str(self.step)})

    def load_resume(self) -> None:
        tensors, metadata = self.run.read_resume()
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        moments: dict[str, dict[str, torch.Tensor]] = {}
        for name in self._param_names():
            found = {key: tensors[f"opt.{name}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq") if f"opt.{name}.{key}" in tensors}
            if found:
                moments[name] = found
        self._load_moments(moments)
        self._load_filter(filter_tensors(tensors))
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.batch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = int(metadata["step"])

    # -- the loop (see `drive`) ------------------------------------------------------------------
    def step_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        set_step = getattr(self.objective, "set_step", None)  # objectives whose batches follow a curriculum
        if set_step is not None:
            set_step(self.step)
        return self.objective.step_loss(self.model, self.generator)

    def record(self, train_metrics: dict[str, torch.Tensor] | None) -> str:
        self.last_row = {"step": self.step, **self.objective.evaluate(self.model, train_metrics)}
        self.run.append_metrics(self.last_row)
        return _postfix(self.last_row)

    def checkpoint(self) -> None:
        """Resume state first: killed in between, the run resumes at this step and writes the checkpoint again,
        whereas a checkpoint without resume state (killed after step 0's) would leave a run that cannot resume."""
        self.save_resume()
        self.run.write_checkpoint(self.step, checkpoint_tensors(self.model))

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step from `loss` at the current step's learning rate, then advance the step."""
        tr = self.cfg.train
        optimizer_step(
            self.optimizer, loss, self.step, tr, lambda: torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.grad_clip), self.grad_filter
        )
        self.step += 1

    def prepare_fit(self) -> None:
        """Drop metrics rows at or after the current step (a resumed run recomputes them) and enter train mode."""
        self.run.truncate_metrics(before_step=self.step)
        self.model.train()

    def fit(self, progress: bool = True) -> dict[str, float] | None:
        """Train from `self.step` to `steps`; returns the last metrics row."""
        self.prepare_fit()
        drive(self, self.cfg.train, self.cfg.preset or "train", self.run.path, progress)
        return self.last_row


def _postfix(row: dict[str, float]) -> str:
    if "train_acc" not in row:  # regression (icl-functions): losses only
        return f"train {row['train_loss']:.2e} test {row['test_loss']:.3f}"
    text = f"train {row['train_loss']:.2e} ({row['train_acc']:.0%}) test {row['test_loss']:.2e} ({row['test_acc']:.0%})"
    if "gen_acc" in row:
        text += f" val {row['val_acc']:.0%} gen {row['gen_acc']:.0%}"
    return text


def _same_run(stored: RunConfig, requested: RunConfig) -> bool:
    """A re-run may extend `steps` or change the device; anything else is a different run."""
    a, b = stored.to_dict(), requested.to_dict()
    for d in (a, b):
        d["train"].pop("steps")
        d["train"].pop("device")
        d.pop("preset")
    return a == b


def load_existing(trainer: Trainer) -> None:
    """Resume the trainer from its run directory when that holds this run; refuse a different or unresumable run."""
    run = trainer.run
    if not run.exists():
        return
    if not _same_run(run.read_config(), trainer.cfg):
        raise UserError(f"{run.path} holds a different run; use another --out, or --fresh to overwrite it")
    if run.resume_path.is_file():
        trainer.load_resume()
        if trainer.step > trainer.cfg.train.steps:
            raise UserError(
                f"{run.path} is already at step {trainer.step}, past --steps {trainer.cfg.train.steps}; "
                f"give --steps {trainer.step} or more to resume or extend it"
            )
    elif run.checkpoint_steps():
        raise UserError(f"{run.path} has checkpoints but no resume state (an imported run?); train into another --out")


@contextmanager
def removed_on_failure(paths: list[Path]) -> Iterator[None]:
    """Nothing half-made: a failed start removes the run directories it created."""
    created = [path for path in paths if not path.exists()]
    try:
        yield
    except BaseException:
        for path in created:
            if path.exists():
                shutil.rmtree(path)
        raise


def train(cfg: RunConfig, out: str | Path, fresh: bool = False, progress: bool = True) -> Trainer:
    """Train into a run directory, resuming it when it already holds this run."""
    cfg.validate()
    run = RunDir(out)
    device = resolve_device(cfg.train.device)
    with ExitStack() as held:
        with removed_on_failure([run.path]):
            # One writer per run directory, from before --fresh clears it to the last row (store.directory_lock).
            held.enter_context(run.locked("`grokking train`"))
            if fresh and run.exists():
                run.clear()
            trainer = Trainer(cfg, run, device)
            load_existing(trainer)
            run.write_config(trainer.cfg)
        if progress:
            state = f"resuming at step {trainer.step}" if trainer.step else "starting"
            print(f"{cfg.preset or 'run'}: {state} on {device} in {describe(trainer.dtype)} -> {run.path}", flush=True)
        start = time.perf_counter()
        trainer.fit(progress=progress)
        trainer.elapsed = time.perf_counter() - start
    return trainer
