"""Helpers shared by the test modules: tiny configs that train in a second, run comparisons, the CLI, and
one `quick` run trained per session for every test that needs a grokked model.

Test modules import the plain helpers with `from conftest import ...`; fixtures need no import.
tests/faults/ is a package, so its own conftest.py never takes this module's name.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch

from grokking import load_run
from grokking.config import RunConfig, preset_config
from grokking.store import RunDir

CLI = [sys.executable, "-m", "grokking.cli"]

# `quick` made tiny: modular addition with p=23 and one layer of width 32 (`steps` aside, which callers choose).
TINY_SETS = {
    "p": "23",
    "d_model": "32",
    "n_heads": "2",
    "d_head": "16",
    "d_mlp": "64",
    "frac_train": "0.5",
    "lr": "3e-3",
    "eval_every": "10",
    "checkpoint_every": "20",
}


def tiny_config(**overrides: str) -> RunConfig:
    """A small modular-addition run (p=23, 60 steps) that trains in about a second."""
    cfg = preset_config("quick")
    for key, value in {**TINY_SETS, "steps": "60", **overrides}.items():
        cfg.set(key, value)
    return cfg


# Every structural preset made small: 2 layers of width 64 in fp32 (`task_preset` keeps its task and data).
TINY_LM_SETS = {
    "n_layers": "2",
    "d_model": "64",
    "n_heads": "2",
    "d_head": "32",
    "d_mlp": "128",
    "batch_size": "32",
    "warmup_steps": "50",
    "steps": "600",
    "eval_every": "150",
    "checkpoint_every": "150",
    "eval_examples": "200",
    "lr": "3e-3",
    "precision": "fp32",
}


def tiny_lm(task_preset: str = "qf-cpu", **overrides: str) -> RunConfig:
    """A 2-layer width-64 language model on `task_preset`'s task, in fp32; 600 steps learn QF's in-distribution rule."""
    cfg = preset_config(task_preset)
    for key, value in {**TINY_LM_SETS, **overrides}.items():
        cfg.set(key, value)
    return cfg


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated language data goes to one cache per session, never to the user's ~/.cache."""
    monkeypatch.setenv("GROKKING_DATA_CACHE", str(tmp_path_factory.getbasetemp() / "data-cache"))


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The `quick` preset trained and analysed once per session: it memorises, then groks (about a minute on
    one core). Shared, so read it only; a test that writes into a run directory works on a copy (`shutil.copytree`)."""
    from grokking.analysis.progress import analyze
    from grokking.train import train

    out = tmp_path_factory.mktemp("quick") / "run"
    train(preset_config("quick"), out, progress=False)
    analyze(out, progress=False)
    return out


# -- comparing runs ----------------------------------------------------------------------------------------


def final_weights(path: Path) -> dict[str, torch.Tensor]:
    run = load_run(path)
    return run.weights(run.steps[-1])


def assert_bit_identical(a: Path, b: Path) -> None:
    """The last checkpoints hold equal tensors and metrics.csv holds equal rows."""
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    pd.testing.assert_frame_equal(load_run(a).metrics, load_run(b).metrics)


def assert_crash_then_resume_is_bit_identical(make_config: Callable[[], RunConfig], root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash at step 45 (checkpoints every 20), resume from step 40: the run ends equal to an uninterrupted one."""
    from grokking.train import Trainer, train

    train(make_config(), root / "ref", progress=False)
    update = Trainer.update

    def crash_at_45(self: Trainer, loss: torch.Tensor) -> None:
        if self.step == 45:
            raise RuntimeError("simulated crash")
        update(self, loss)

    monkeypatch.setattr(Trainer, "update", crash_at_45)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(make_config(), root / "crashed", progress=False)
    monkeypatch.setattr(Trainer, "update", update)
    assert RunDir(root / "crashed").checkpoint_steps()[-1] == 40
    train(make_config(), root / "crashed", progress=False)
    assert_bit_identical(root / "ref", root / "crashed")


# -- batched seeds -----------------------------------------------------------------------------------------

# Modular seeds run the same table fast path under vmap as solo. Measured (benchmarks/tolerance_bounds.py) in fp32
# and bf16, with minibatches and per-seed clipping: bit-identical weights and losses within 4e-16 relative on AVX-512/
# AMX kernels at 1 and 2 threads and on AVX2 kernels at 1 thread; on AVX2 kernels at 2 threads, losses within 5e-7
# relative and weights within 1.4e-5 after 100 steps (threads split a reduction in another order). Bounds: 20x and 7x.
MODULAR_LOSS_RTOL, MODULAR_WEIGHT_ATOL = 1e-5, 1e-4


def train_both(cfg: RunConfig, seeds: list[int], root: Path) -> None:
    """Seeds batched into root/batched/seed{s} and one by one into root/solo/seed{s}."""
    from grokking.batched import seed_config, train_batched
    from grokking.train import train

    train_batched(cfg, seeds, [root / "batched" / f"seed{s}" for s in seeds], progress=False)
    for s in seeds:
        train(seed_config(cfg, s), root / "solo" / f"seed{s}", progress=False)


def assert_matches_solo(root: Path, seed: int, loss_rtol: float, weight_atol: float, acc_atol: float = 0.0, loose: tuple[str, ...] = ()) -> None:
    """The same config and checkpoint steps as the solo run; losses, accuracies and weights within the given bounds.

    Callers pass bounds measured by `benchmarks/tolerance_bounds.py` under every kernel set this lab's CPUs run
    (docs/results/test-suite.md), so a bound that holds on one CPU holds on the others.
    """
    batched, solo = load_run(root / "batched" / f"seed{seed}"), load_run(root / "solo" / f"seed{seed}")
    assert batched.config.to_dict() == solo.config.to_dict()
    assert batched.config.train.seed == seed
    assert set(solo.steps) <= set(batched.steps)
    assert list(batched.metrics.columns) == list(solo.metrics.columns)
    assert batched.metrics.step.tolist() == solo.metrics.step.tolist()
    for column in solo.metrics.columns.drop("step"):
        a, b = batched.metrics[column].to_numpy(), solo.metrics[column].to_numpy()
        if column.endswith("acc"):
            assert abs(a - b).max() <= acc_atol, column
        else:
            assert (abs(a - b) <= loss_rtol * abs(b)).all(), f"{column}: {a} vs {b}"
    for step in solo.steps:
        wb, ws = batched.weights(step), solo.weights(step)
        assert wb.keys() == ws.keys()
        for name in wb:
            if not name.endswith(loose):
                torch.testing.assert_close(wb[name], ws[name], rtol=0, atol=weight_atol, msg=f"{name} at step {step}")


# -- the CLI in a subprocess -------------------------------------------------------------------------------


def start_cli_train(out: Path, steps: int, *extra: str) -> subprocess.Popen:
    """`grokking train quick` at tiny size (TINY_SETS) into `out`, in a single-threaded child process."""
    sets = [arg for key, value in TINY_SETS.items() for arg in ("--set", f"{key}={value}")]
    args = CLI + ["train", "quick", "--out", str(out), "--steps", str(steps), *extra, *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def wait_for_checkpoints(out: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Block until `out` holds `n` checkpoints; fail if `proc` finished first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while len(RunDir(out).checkpoint_steps()) < n:
        assert proc.poll() is None, "training finished before it could be interrupted"
        assert time.monotonic() < deadline, f"no {n} checkpoints in {out} after {timeout:.0f} s"
        time.sleep(0.02)
