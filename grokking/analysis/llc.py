"""The local learning coefficient (LLC) of checkpoints, estimated by SGLD through devinterp.

The LLC of a checkpoint w* is nbeta * (E[L(w)] - L(w*)), the expectation over a posterior tempered by
nbeta and pulled back to w* by `localization`; devinterp (`devinterp.slt.llc`) samples it with SGLD
chains, so the lab does not re-implement the estimator.

devinterp samples language models: its dataset is a column of token sequences and its loss is per
predicted token. The lab hands it an *index* dataset instead, each row `(training example index, 0)`,
and a loss function that scores those examples with the run's own objective (`batch_loss`: the float64
answer loss of a modular run, the next-token loss over non-pad tokens of a language run) and returns
that batch loss as the one "token" of every row. devinterp's mean over rows and tokens is then exactly
the loss the run was trained on, for every task family, with the same code.

`analyze_llc` is the incremental pass behind `grokking analyze RUN --measures llc`: it writes
RUN/llc.csv (one row per estimated checkpoint) and RUN/llc.json (the SGLD settings); re-running with the
same settings only estimates checkpoints missing from llc.csv, other settings start the table over.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from grokking.errors import UserError
from grokking.run import Run
from grokking.store import atomic_write, write_csv

INSTALL_HINT = "the LLC needs devinterp: pip install 'grokking[llc]' (or pip install devinterp==2.0.1)"
SAVE_EVERY_SECONDS = 10.0

BatchLoss = Callable[[nn.Module, Tensor], Tensor]
"""(model, example indices [batch]) -> the scalar training loss on those examples, with gradients."""


@dataclass(frozen=True)
class SGLDSettings:
    """SGLD settings of one LLC estimate. The step size and localization were chosen with `grokking llc-calibrate`
    on `quick` (docs/results/llc.md): the largest step whose chains level off within the draws while staying
    local (a loss rise of a few hundredths, not a walk towards chance); a smaller step or a weaker localization
    leaves the traces still climbing at the last draw."""

    lr: float = 1e-4
    localization: float = 1000.0
    nbeta: float | None = None
    chains: int = 4
    draws: int = 200
    burnin: int = 0
    batch_size: int = 64
    seed: int = 0

    @property
    def resolved_nbeta(self) -> float:
        """nbeta, by default devinterp's batch_size / ln(batch_size) (n / ln n with the batch as n)."""
        return self.nbeta if self.nbeta is not None else self.batch_size / math.log(self.batch_size)

    def validate(self) -> SGLDSettings:
        for name in ("lr", "localization"):
            if not getattr(self, name) >= 0:
                raise UserError(f"--llc-{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.nbeta is not None and not self.nbeta > 0:
            raise UserError(f"--llc-nbeta must be > 0, got {self.nbeta}")
        for name in ("chains", "draws", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--llc-{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise UserError("--llc-batch-size must be at least 2 (nbeta defaults to batch / ln batch)")
        if self.burnin < 0:
            raise UserError(f"--llc-burnin must be >= 0, got {self.burnin}")
        return self

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "nbeta": self.resolved_nbeta}


@dataclass
class LLCEstimate:
    """One checkpoint's LLC: mean and std over chains, and the traces that show whether sampling converged."""

    mean: float
    std: float
    per_chain: np.ndarray  # [chain]
    loss_trace: np.ndarray  # [chain, SGLD step]: the minibatch loss at each step
    init_loss: float  # the checkpoint's own loss, over devinterp's init batches
    seconds: float


@dataclass(frozen=True)
class LLCRequest:
    """What `grokking analyze --measures llc` asks for: the SGLD settings and which checkpoints (`select_steps`)."""

    settings: SGLDSettings = SGLDSettings()
    sample: int | None = None
    every: int | None = None

    def validate(self) -> LLCRequest:
        """Fail on a bad flag or a missing devinterp before any analysis work starts."""
        self.settings.validate()
        select_steps([], self.sample, self.every)
        _devinterp_llc()
        return self


def _devinterp_llc() -> Callable:
    try:
        from devinterp.slt.llc import llc
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return llc


@contextmanager
def _quiet_chains() -> Iterator[None]:
    """Runs devinterp's chains without its per-chain progress bars (over many checkpoints the lab's own bar
    says enough) and with the objects alive now frozen out of the garbage collector: devinterp calls
    gc.collect() before and after every chain, which took ~2.4 s each here with torch, transformer_lens and
    datasets loaded: together about as long as a 200-draw chain of `quick`."""
    from devinterp.slt import sampler

    original = sampler.trange
    sampler.trange = partial(original, disable=True)
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="devinterp")
            yield
    finally:
        gc.unfreeze()
        sampler.trange = original


class _Holder(nn.Module):
    """Hides the lab's model from devinterp's TransformerLens check (a `cfg.n_heads` attribute), which would call
    HookedTransformer's `.to(device, print_details=False)`; the lab's HookedRootModule has a plain `.to`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


def estimate_llc(model: nn.Module, batch_loss: BatchLoss, n_examples: int, settings: SGLDSettings, device: str | torch.device = "cpu") -> LLCEstimate:
    """Estimate the LLC of `model` (left unchanged) on examples 0..n_examples-1 scored by `batch_loss`."""
    llc = _devinterp_llc()
    from datasets import Dataset

    settings.validate()
    if n_examples < settings.batch_size:
        raise UserError(f"--llc-batch-size {settings.batch_size} is larger than the {n_examples} training examples")
    index = Dataset.from_dict({"input_ids": [[i, 0] for i in range(n_examples)]}).with_format("torch")

    def per_token_loss(sampled: _Holder, input_ids: Tensor) -> Tensor:
        return batch_loss(sampled.model, input_ids[:, 0]).reshape(1, 1).expand(len(input_ids), 1)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grokking-llc-") as tmp, _quiet_chains():
        result = llc(
            _Holder(model),
            index,
            {},
            lr=settings.lr,
            n_beta=settings.resolved_nbeta,
            loss_fn=per_token_loss,
            num_chains=settings.chains,
            num_draws=settings.draws,
            num_burnin_steps=settings.burnin,
            batch_size=settings.batch_size,
            localization=settings.localization,
            init_seed=settings.seed,
            num_init_loss_batches=max(1, min(32, n_examples // settings.batch_size)),
            device=str(device),
            output_path=Path(tmp) / "samples.zarr",
        ).load()
    return LLCEstimate(
        mean=float(result.llc_mean),
        std=float(result.llc_std),
        per_chain=result.llc_per_chain.values.astype(np.float64),
        loss_trace=result.loss_trace.values.astype(np.float64),
        init_loss=float(result.init_loss),
        seconds=time.perf_counter() - start,
    )


def run_batch_loss(run: Run, device: str | torch.device = "cpu") -> tuple[BatchLoss, int]:
    """The run's training loss on a batch of training-example indices (fp32 matmuls, so an estimate does not
    depend on the machine's bf16 support), and the number of training examples."""
    from grokking.objectives import LMObjective, ModularObjective
    from grokking.tasks.modular import ModularTask
    from grokking.tasks.registry import LMRunData

    task = run.task
    if isinstance(task, ModularTask):
        objective = ModularObjective(task, 0, torch.device(device))
        n = len(objective.train_labels)
    elif isinstance(task, LMRunData):
        objective = LMObjective(task, 0, torch.device(device))
        n = len(objective.tokens)
    else:
        raise UserError(f"the LLC is for modular and language runs; {run.path} is a {run.config.task.task} run")

    def loss(model: nn.Module, idx: Tensor) -> Tensor:
        return objective.batch_loss(model, idx.to(device))[0]

    return loss, n


def checkpoint_llc(run: Run, step: int, settings: SGLDSettings, device: str | torch.device = "cpu") -> LLCEstimate:
    """The LLC of one checkpoint of a run, on its training data."""
    loss, n = run_batch_loss(run, device)
    return estimate_llc(run.model(step, device=str(device)), loss, n, settings, device)


def select_steps(steps: list[int], sample: int | None = None, every: int | None = None) -> list[int]:
    """The checkpoints to estimate: every `every`-th one, then `sample` of those spread evenly (last included)."""
    if every is not None and every < 1:
        raise UserError(f"--llc-every must be at least 1, got {every}")
    if sample is not None and sample < 1:
        raise UserError(f"--llc-sample must be at least 1, got {sample}")
    chosen = steps[::-1][:: every or 1][::-1]  # counted back from the final checkpoint, which is always kept
    if sample is not None and sample < len(chosen):
        idx = np.unique(np.linspace(0, len(chosen) - 1, sample).round().astype(int))
        chosen = [chosen[i] for i in idx]
    return chosen


def analyze_llc(run: Run, steps: list[int], request: LLCRequest, device: str | torch.device = "cpu", progress: bool = True) -> pd.DataFrame:
    """Estimate the LLC of the selected checkpoints missing from RUN/llc.csv; returns the whole table."""
    settings = request.validate().settings
    csv_path, json_path = run.dir.llc_path, run.dir.llc_settings_path
    signature = {"sgld": settings.to_dict(), "devinterp": _devinterp_version()}
    previous = run.dir.read_json(json_path) if json_path.is_file() else {}
    reuse = previous.get("signature") == signature and csv_path.is_file()
    rows = pd.read_csv(csv_path).to_dict("records") if reuse else []
    atomic_write(json_path, json.dumps({"signature": signature}, indent=2).encode())
    done = {int(r["step"]) for r in rows}
    todo = [s for s in select_steps(steps, request.sample, request.every) if s not in done]
    loss, n = run_batch_loss(run, device)

    def save() -> pd.DataFrame:
        table = pd.DataFrame(rows, columns=["step", "llc_mean", "llc_std", "llc_init_loss", "llc_seconds"])
        table = table.sort_values("step").reset_index(drop=True)
        write_csv(csv_path, table)
        return table

    last_save = time.perf_counter()
    try:
        for step in tqdm(todo, desc="llc", unit="ckpt", disable=not progress, dynamic_ncols=True):
            est = estimate_llc(run.model(step, device=str(device)), loss, n, settings, device)
            rows.append({"step": step, "llc_mean": est.mean, "llc_std": est.std, "llc_init_loss": est.init_loss, "llc_seconds": est.seconds})
            if time.perf_counter() - last_save > SAVE_EVERY_SECONDS:
                save()
                last_save = time.perf_counter()
    finally:
        table = save()
    return table


def _devinterp_version() -> str:
    from importlib.metadata import version

    return version("devinterp")


def calibrate(
    run: Run, step: int, lrs: list[float], localizations: list[float], base: SGLDSettings, device: str | torch.device = "cpu", progress: bool = True
) -> tuple[pd.DataFrame, dict[tuple[float, float], LLCEstimate]]:
    """One LLC estimate per (step size, localization) on one checkpoint: a table (llc mean/std, and how much
    the last quarter of each chain's loss trace still drifts) and every estimate with its per-chain traces."""
    if not lrs or not localizations:
        raise UserError("llc-calibrate needs at least one --lr and one --localization")
    loss, n = run_batch_loss(run, device)
    model = run.model(step, device=str(device))
    estimates: dict[tuple[float, float], LLCEstimate] = {}
    rows = []
    grid = [(lr, loc) for loc in localizations for lr in lrs]
    for lr, loc in tqdm(grid, desc="calibrate", unit="setting", disable=not progress, dynamic_ncols=True):
        est = estimate_llc(model, loss, n, dataclasses.replace(base, lr=lr, localization=loc), device)
        estimates[(lr, loc)] = est
        rows.append(
            {
                "lr": lr,
                "localization": loc,
                "llc_mean": est.mean,
                "llc_std": est.std,
                "init_loss": est.init_loss,
                "drift": trace_drift(est.loss_trace, est.init_loss),
                "seconds": est.seconds,
            }
        )
    return pd.DataFrame(rows), estimates


def trace_drift(loss_trace: np.ndarray, init_loss: float) -> float:
    """How far the chains were from equilibrium at the end: the rise of the mean loss over the last quarter of the
    draws, as a fraction of the whole rise above the checkpoint's loss (about 0 when the traces level off)."""
    mean = loss_trace.mean(0)
    quarter = max(1, len(mean) // 4)
    rise = mean[-quarter:].mean() - init_loss
    if not rise > 0:
        return float("nan")
    return float((mean[-quarter:].mean() - mean[-2 * quarter : -quarter].mean()) / rise)


def merge_llc(table: pd.DataFrame, llc: pd.DataFrame) -> pd.DataFrame:
    """The analysis table with llc.csv's `llc_mean` and `llc_std` as columns (empty where no estimate was made)."""
    table = table.drop(columns=[c for c in ("llc_mean", "llc_std") if c in table])
    return table.merge(llc[["step", "llc_mean", "llc_std"]], on="step", how="left")


def calibration_tables(estimates: dict[tuple[float, float], LLCEstimate]) -> pd.DataFrame:
    """Every chain's loss trace of a calibration, long-form: lr, localization, chain, sgld_step, loss."""
    frames = []
    for (lr, loc), est in estimates.items():
        chains, steps = np.meshgrid(np.arange(est.loss_trace.shape[0]), np.arange(est.loss_trace.shape[1]), indexing="ij")
        frames.append(
            pd.DataFrame({"lr": lr, "localization": loc, "chain": chains.ravel(), "sgld_step": steps.ravel(), "loss": est.loss_trace.ravel()})
        )
    return pd.concat(frames, ignore_index=True)
