"""Bad input gets one clear line and a non-zero exit; files are written atomically; corrupt files are named."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from grokking import load_run
from grokking.errors import UserError
from grokking.store import RunDir, atomic_write
from grokking.train import train

from conftest import CLI, tiny_config


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "nanda-p11"], "unknown preset 'nanda-p11' (did you mean 'nanda-p113'?)"),
        (["train", "quick", "--set", "learning_rate=1"], "unknown config key 'learning_rate'"),
        (["train", "quick", "--set", "p=100"], "p must be a prime"),
        (["train", "quick", "--set", "p=3"], "p must be a prime >= 5"),
        (["train", "quick", "--set", "frac_train=1.0"], "frac_train must be in (0, 1)"),
        (["train", "quick", "--set", "frac_train=0"], "frac_train must be in (0, 1)"),
        (["train", "quick", "--steps", "-5"], "steps must be >= 0"),
        (["train", "quick", "--set", "lr"], "--set expects key=value"),
        (["train", "quick", "--set", "d_model=abc"], "cannot read 'abc'"),
    ],
)
def test_user_mistakes_get_one_line_and_no_run_directory(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(CLI + args + ["--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not out.exists()


def test_missing_run_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a run directory"):
        load_run(tmp_path / "empty")


def test_resuming_with_a_different_config_is_refused(tmp_path: Path) -> None:
    train(tiny_config(steps="20"), tmp_path / "r", progress=False)
    with pytest.raises(UserError, match="holds a different run"):
        train(tiny_config(steps="20", lr="1e-2"), tmp_path / "r", progress=False)
    train(tiny_config(steps="20", lr="1e-2"), tmp_path / "r", fresh=True, progress=False)
    assert load_run(tmp_path / "r").config.train.lr == 1e-2


def test_resuming_with_fewer_steps_than_done_is_refused(tmp_path: Path) -> None:
    """A run at step 20 asked for 10 steps would never meet its stop step: refused, and the run left as it was."""
    train(tiny_config(steps="20"), tmp_path / "r", progress=False)
    before = (tmp_path / "r" / "metrics.csv").read_text()
    with pytest.raises(UserError, match="already at step 20, past --steps 10"):
        train(tiny_config(steps="10"), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "metrics.csv").read_text() == before
    assert load_run(tmp_path / "r").config.train.steps == 20


def test_truncated_checkpoint_is_named_and_others_still_load(tmp_path: Path) -> None:
    train(tiny_config(steps="40"), tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    bad = run.dir.checkpoint_path(20)
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(UserError, match="step_0000020.safetensors is corrupt or truncated"):
        run.model(20)
    assert run.model(40) is not None and run.model(0) is not None
    bad.write_bytes(b"garbage that is not safetensors")
    with pytest.raises(UserError, match="step_0000020"):
        run.weights(20)


def test_atomic_write_leaves_nothing_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.fsync", full_disk)
    with pytest.raises(UserError, match="disk full while writing .*file.bin"):
        atomic_write(target, b"new contents")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_full_disk_during_training_is_one_line(tmp_path: Path) -> None:
    """A real full disk: a 64 KiB tmpfs is not available unprivileged, so use /dev/full for the metrics file."""
    run = RunDir(tmp_path)
    tmp_path.joinpath("metrics.csv").symlink_to("/dev/full")
    with pytest.raises(UserError, match="disk full"):
        run.append_metrics({"step": 0, "train_loss": 1.0})


def test_analysing_a_run_without_checkpoints_is_one_line(tmp_path: Path) -> None:
    train(tiny_config(steps="0"), tmp_path / "r", progress=False)
    for path in (tmp_path / "r" / "checkpoints").iterdir():
        path.unlink()
    proc = subprocess.run(CLI + ["analyze", str(tmp_path / "r")], capture_output=True, text=True)
    assert proc.returncode == 2 and "has no checkpoints to analyse" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(CLI + ["report", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no run directory at" in proc.stderr and "Traceback" not in proc.stderr


def test_analysis_skips_a_corrupt_checkpoint_and_says_so(tmp_path: Path) -> None:
    from grokking.analysis.progress import analyze

    train(tiny_config(steps="60"), tmp_path / "r", progress=False)
    bad = RunDir(tmp_path / "r").checkpoint_path(20)
    bad.write_bytes(b"\x00" * 10)
    table = analyze(tmp_path / "r", progress=False)
    assert table.step.tolist() == [0, 40, 60]
    import json

    assert "step_0000020" in json.loads((tmp_path / "r" / "analysis.json").read_text())["skipped"]["20"]
