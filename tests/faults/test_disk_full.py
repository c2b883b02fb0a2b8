"""Promise: a disk that fills during a checkpoint or a metrics.csv append stops the run with one line naming
the file and the disk; after space is freed the same call resumes, and metrics.csv ends up with every step
exactly once, byte-identical to a run that never met a full disk (as are the checkpoints).

The disk is a real 1 MiB tmpfs (see `small_disk`), filled with a ballast file at a chosen step.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grokking.errors import UserError
from grokking.store import RunDir
from grokking.train import train

from conftest import tiny_config
from faults.conftest import fill, in_child, training_files


def fill_at(monkeypatch: pytest.MonkeyPatch, disk: Path, step: int) -> list[Path]:
    """Fill `disk` just before metrics row `step` is appended; returns [ballast path] once filled."""
    real_append, ballast = RunDir.append_metrics, []

    def append(self: RunDir, row: dict) -> None:
        if row["step"] == step and not ballast:
            ballast.append(fill(disk))
        real_append(self, row)

    monkeypatch.setattr(RunDir, "append_metrics", append)
    return ballast


def check_disk_full(error: UserError, path: Path, disk: Path) -> None:
    text = str(error)
    assert "\n" not in text and f"disk full while writing {path}" in text and f"disk mounted at {disk.resolve()}" in text


@pytest.mark.parametrize("case", ["checkpoint", "metrics"])
def test_full_disk_stops_in_one_line_and_resumes_without_loss(case: str, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if case == "checkpoint":
        # Filled after step 20's checkpoint; the small metrics.csv still has room in its page, step 40's checkpoint
        # (resume state first, then weights) has none.
        cfg, fill_step, fails_on = tiny_config(), 30, "resume.safetensors"
    else:
        # One row per step, 78-80 bytes here (>= 50 whatever the values): metrics.csv needs a new 4 KiB page within
        # 82 rows of the fill, before the next checkpoint (step 200), which would otherwise be what fails.
        cfg, fill_step, fails_on = tiny_config(steps="200", eval_every="1", checkpoint_every="100"), 101, "metrics.csv"
    reference, out = tmp_path / "reference", small_disk / "run"
    assert in_child(lambda: train(cfg, reference, progress=False)) == 0

    ballast = fill_at(monkeypatch, small_disk, fill_step)
    with pytest.raises(UserError) as caught:
        train(cfg, out, progress=False)
    check_disk_full(caught.value, out / fails_on, small_disk)
    assert ballast, "the disk was never filled"
    metrics = (out / "metrics.csv").read_text()
    assert metrics.endswith("\n")  # no torn row left behind
    last_step = int(metrics.splitlines()[-1].split(",")[0])
    assert fill_step - 1 <= last_step < cfg.train.steps  # rows up to the failure kept, none torn

    ballast[0].unlink()
    monkeypatch.undo()
    train(cfg, out, progress=False)  # the same call, after space is freed
    assert training_files(out) == training_files(reference)
