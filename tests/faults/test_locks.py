"""Promise: one writer per run directory and per sweep directory. A second `grokking train` or `grokking sweep`
on a directory in use refuses in one line naming the holder and changes nothing; when the holder is killed
(SIGKILL: no cleanup runs), the lock is gone with it and the same command resumes the work.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from grokking.batched import train_batched
from grokking.errors import UserError
from grokking.store import RunDir

from conftest import tiny_config
from faults.conftest import files_of, finish_child, in_child, pause_training_at, start_child, tiny_sweep, training_files, wait_for


def test_second_training_refuses_and_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    from grokking.train import train

    cfg, out, reference, paused = tiny_config(), tmp_path / "run", tmp_path / "reference", tmp_path / "paused"
    assert in_child(lambda: train(cfg, reference, progress=False)) == 0

    pid = start_child(lambda: (pause_training_at(30, paused), train(cfg, out, progress=False)))
    try:
        wait_for(paused, pid)
        before = files_of(out)
        for second in (cfg, tiny_config(lr="1e-2")):  # the same run, or another one: the lock answers first
            with pytest.raises(UserError) as caught:
                train(second, out, progress=False)
            message = str(caught.value)
            assert "\n" not in message and f"{out} is in use by `grokking train` (pid {pid} on " in message
        assert files_of(out) == before  # nothing interleaved
    finally:
        os.kill(pid, signal.SIGKILL)
    assert finish_child(pid) == -signal.SIGKILL
    assert (out / ".lock").is_file()  # the file stays; the kernel dropped the lock with its holder
    assert in_child(lambda: train(cfg, out, progress=False)) == 0
    assert training_files(out) == training_files(reference)


def test_second_sweep_refuses_and_a_killed_driver_frees_the_lock(tmp_path: Path) -> None:
    from grokking.experiments import load_sweep, run_sweep

    spec, out, paused = tiny_sweep({"weight_decay": [1.0, 0.5]}, [0]), tmp_path / "sweep", tmp_path / "paused"
    pid = start_child(lambda: (pause_training_at(30, paused), run_sweep(spec, out, progress=False)))
    try:
        wait_for(paused, pid)
        before = files_of(out)
        with pytest.raises(UserError) as caught:
            run_sweep(spec, out, progress=False)
        message = str(caught.value)
        assert "\n" not in message and f"{out} is in use by `grokking sweep` (pid {pid} on " in message
        assert files_of(out) == before
    finally:
        os.kill(pid, signal.SIGKILL)
    assert finish_child(pid) == -signal.SIGKILL
    assert in_child(lambda: run_sweep(spec, out, progress=False)) == 0
    assert load_sweep(out).counts()["done"] == 2


def test_batched_seeds_refuse_a_run_directory_in_use(tmp_path: Path) -> None:
    """Promise: `--batch-seeds` takes every seed's run lock too, so it never interleaves with another writer."""
    busy, free = tmp_path / "seed0", tmp_path / "seed1"
    with RunDir(busy).locked("another `grokking train`"):
        with pytest.raises(UserError, match="is in use by another `grokking train`"):
            train_batched(tiny_config(steps="20"), [0, 1], [busy, free], progress=False)
    assert not free.exists(), "a refused start leaves no new directory behind"
    train_batched(tiny_config(steps="20"), [0, 1], [busy, free], progress=False)  # free again: it trains
    assert RunDir(free).checkpoint_steps()[-1] == 20
