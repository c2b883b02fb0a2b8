"""Training: exact resume (extend, SIGKILL, Ctrl-C), checkpoint schedule, metrics rows."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import torch

from grokking import load_run
from grokking.store import RunDir
from grokking.train import is_checkpoint_step, lr_at, train

from conftest import assert_bit_identical, assert_crash_then_resume_is_bit_identical, start_cli_train, tiny_config, wait_for_checkpoints


def test_extending_a_run_matches_training_straight_through(tmp_path: Path) -> None:
    train(tiny_config(steps="30"), tmp_path / "a", progress=False)
    train(tiny_config(steps="60"), tmp_path / "a", progress=False)
    train(tiny_config(steps="60"), tmp_path / "b", progress=False)
    assert_bit_identical(tmp_path / "a", tmp_path / "b")


def test_minibatch_run_resumes_exactly(tmp_path: Path) -> None:
    train(tiny_config(steps="30", batch_size="16"), tmp_path / "a", progress=False)
    train(tiny_config(steps="60", batch_size="16"), tmp_path / "a", progress=False)
    train(tiny_config(steps="60", batch_size="16"), tmp_path / "b", progress=False)
    assert_bit_identical(tmp_path / "a", tmp_path / "b")


def test_minibatch_run_resumes_exactly_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between checkpoints resumes from the last one and replays the same minibatches."""
    assert_crash_then_resume_is_bit_identical(lambda: tiny_config(steps="60", batch_size="16", checkpoint_every="20"), tmp_path, monkeypatch)


def test_run_directory_layout(tmp_path: Path) -> None:
    train(tiny_config(steps="50"), tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    assert run.steps == [0, 20, 40, 50]
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == [
        "step_0000000.safetensors",
        "step_0000020.safetensors",
        "step_0000040.safetensors",
        "step_0000050.safetensors",
    ]
    assert list(run.metrics.columns[:5]) == ["step", "train_loss", "test_loss", "train_acc", "test_acc"]
    assert run.metrics.step.tolist() == [0, 10, 20, 30, 40, 50]
    assert not list((tmp_path / "r").glob(".*tmp*")), "no temporary files left behind"
    # Train metrics logged for free from the training forward equal a separate evaluation.
    model = run.model(20)
    from grokking.objectives import ModularObjective

    row = ModularObjective(run.task, 0, torch.device("cpu")).evaluate(model, None)
    logged = run.metrics.set_index("step").loc[20]
    assert abs(row["train_loss"] - logged.train_loss) < 1e-9 * max(1, logged.train_loss)
    assert abs(row["test_acc"] - logged.test_acc) < 1e-12


def test_checkpoint_schedule_can_be_denser_early() -> None:
    tr = tiny_config(steps="1000", checkpoint_every="100", dense_checkpoint_every="10", dense_until="50").train
    steps = [s for s in range(1001) if is_checkpoint_step(s, tr)]
    assert steps[:6] == [0, 10, 20, 30, 40, 100]
    assert steps[-1] == 1000


def test_warmup_is_linear_then_constant() -> None:
    tr = tiny_config(warmup_steps="10", lr="1e-3").train
    assert lr_at(0, tr) == 1e-4
    assert lr_at(9, tr) == 1e-3
    assert lr_at(500, tr) == 1e-3


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path: Path) -> None:
    steps = 4000
    ref = start_cli_train(tmp_path / "ref", steps)
    killed = start_cli_train(tmp_path / "killed", steps)
    kill_point = random.Random(2026)  # seeded: a failure names a kill point that can be replayed
    wait_for_checkpoints(tmp_path / "killed", kill_point.randint(3, 30), killed)
    time.sleep(kill_point.random() * 0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert RunDir(tmp_path / "killed").checkpoint_steps()[-1] < steps
    resumed = start_cli_train(tmp_path / "killed", steps)
    assert resumed.wait() == 0, resumed.stderr.read()
    assert ref.wait() == 0
    assert_bit_identical(tmp_path / "ref", tmp_path / "killed")


def test_ctrl_c_saves_state_and_resume_is_bit_identical(tmp_path: Path) -> None:
    steps = 4000
    ref = start_cli_train(tmp_path / "ref", steps)
    interrupted = start_cli_train(tmp_path / "int", steps)
    wait_for_checkpoints(tmp_path / "int", 5, interrupted)
    interrupted.send_signal(signal.SIGINT)
    _, err = interrupted.communicate()
    assert interrupted.returncode == 130
    assert "Re-run the same command to resume" in err and "Traceback" not in err
    resumed = start_cli_train(tmp_path / "int", steps)
    out, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert "resuming at step" in out
    assert ref.wait() == 0
    assert_bit_identical(tmp_path / "ref", tmp_path / "int")
