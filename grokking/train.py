"""The training loop: AdamW with warm-up, evaluation on a cadence, dense checkpoints, exact resume.

Step s means "the weights after s updates". Metrics and checkpoints at step s describe those weights,
so `step_0000000` is the initialisation and the last checkpoint is at `steps`. The resume file holds
the weights, AdamW moments and RNG states at its step; a resumed run is bit-identical on CPU to one
that was never stopped (tested). Ctrl-C (or SIGTERM) finishes the current update, saves the resume
state and exits; SIGKILL loses at most the updates since the last checkpoint.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from grokking.config import RunConfig, TrainConfig
from grokking.errors import UserError
from grokking.model import Transformer, checkpoint_tensors
from grokking.objectives import LMObjective, ModularObjective, Objective
from grokking.precision import describe, resolve_precision
from grokking.store import RunDir
from grokking.tasks.modular import ModularTask
from grokking.tasks.registry import build_task


class TrainingInterrupted(Exception):
    """Raised after a clean stop on Ctrl-C / SIGTERM; the run can be resumed."""

    def __init__(self, run_dir: Path, step: int):
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


class Trainer:
    """One run: builds task, model and optimiser from a config and drives them through the loop."""

    def __init__(self, cfg: RunConfig, run: RunDir, device: torch.device):
        self.cfg, self.run, self.device = cfg, run, device
        self.task = build_task(cfg)
        self.model = build_model(cfg, device)
        self.dtype = resolve_precision(cfg.train.precision, device)
        objective = ModularObjective if isinstance(self.task, ModularTask) else LMObjective
        self.objective: Objective = objective(self.task, cfg.train.batch_size, device, self.dtype)
        tr = cfg.train
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay, betas=tr.betas)
        self.generator = torch.Generator().manual_seed(tr.seed + 1)
        self.step = 0
        self.elapsed = 0.0

    # -- resume state ---------------------------------------------------------------------------
    def _param_names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters()]

    def save_resume(self) -> None:
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state = self.optimizer.state_dict()["state"]
        for index, name in enumerate(self._param_names()):
            for key, value in state.get(index, {}).items():
                tensors[f"opt.{name}.{key}"] = torch.as_tensor(value)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batch"] = self.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        self.run.write_resume(tensors, {"step": str(self.step)})

    def load_resume(self) -> None:
        tensors, metadata = self.run.read_resume()
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for index, name in enumerate(self._param_names()):
            moments = {key: tensors[f"opt.{name}.{key}"] for key in ("step", "exp_avg", "exp_avg_sq") if f"opt.{name}.{key}" in tensors}
            if moments:
                state[index] = moments
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": state, "param_groups": groups})
        torch.set_rng_state(tensors["rng.torch"])
        self.generator.set_state(tensors["rng.batch"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = int(metadata["step"])

    # -- the loop -------------------------------------------------------------------------------
    def _record(self, train_metrics: dict[str, torch.Tensor] | None) -> dict[str, float]:
        row = {"step": self.step, **self.objective.evaluate(self.model, train_metrics)}
        self.run.append_metrics(row)
        return row

    def _checkpoint(self) -> None:
        self.run.write_checkpoint(self.step, checkpoint_tensors(self.model))
        self.save_resume()

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step from `loss` at the current step's learning rate, then advance the step."""
        tr = self.cfg.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, tr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tr.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tr.grad_clip)
        self.optimizer.step()
        self.step += 1

    def fit(self, progress: bool = True) -> dict[str, float] | None:
        """Train from `self.step` to `steps`; returns the last metrics row."""
        tr = self.cfg.train
        self.run.truncate_metrics(before_step=self.step)
        self.model.train()
        last_row = None
        bar = tqdm(total=tr.steps, initial=self.step, desc=self.cfg.preset or "train", unit="step",
                   disable=not progress, dynamic_ncols=True, mininterval=0.5)
        with _stop_requests() as stop, bar:
            while True:
                if stop[0]:
                    self.save_resume()
                    raise TrainingInterrupted(self.run.path, self.step)
                evaluating = self.step % tr.eval_every == 0 or self.step == tr.steps
                if self.step == tr.steps:
                    last_row = self._record(None)
                    if is_checkpoint_step(self.step, tr):
                        self._checkpoint()
                    break
                loss, train_metrics = self.objective.step_loss(self.model, self.generator)
                if evaluating:
                    last_row = self._record(train_metrics)
                    bar.set_postfix_str(_postfix(last_row), refresh=False)
                if is_checkpoint_step(self.step, tr):
                    self._checkpoint()
                self.update(loss)
                bar.update(1)
        return last_row


def _postfix(row: dict[str, float]) -> str:
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


def train(cfg: RunConfig, out: str | Path, fresh: bool = False, progress: bool = True) -> Trainer:
    """Train into a run directory, resuming it when it already holds this run."""
    cfg.validate()
    run = RunDir(out)
    device = resolve_device(cfg.train.device)
    if fresh and run.exists():
        run.clear()
    created = not run.path.exists()
    try:
        trainer = Trainer(cfg, run, device)
        if run.exists():
            stored = run.read_config()
            if not _same_run(stored, cfg):
                raise UserError(f"{run.path} holds a different run; use another --out, or --fresh to overwrite it")
            if run.resume_path.is_file():
                trainer.load_resume()
            elif run.checkpoint_steps():
                raise UserError(f"{run.path} has checkpoints but no resume state (an imported run?); train into another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
    except BaseException:
        if created and run.path.exists():
            shutil.rmtree(run.path)  # nothing half-made: a failed start leaves no directory behind
        raise
    if progress:
        state = f"resuming at step {trainer.step}" if trainer.step else "starting"
        print(f"{cfg.preset or 'run'}: {state} on {device} in {describe(trainer.dtype)} -> {run.path}", flush=True)
    start = time.perf_counter()
    trainer.fit(progress=progress)
    trainer.elapsed = time.perf_counter() - start
    return trainer
