"""Promise: a clock that jumps (a laptop that sleeps and resumes, an NTP correction) changes nothing a run
writes. Evaluation and checkpoints follow the step count, never the time; the progress bar keeps going.

Every clock the lab and tqdm read (time.time, monotonic, perf_counter) jumps 8 hours forward every 7th
read and 1 hour back every 11th; training and analysis under it are byte-identical to an undisturbed run.
"""

from __future__ import annotations

import time
from pathlib import Path

from conftest import tiny_config
from faults.conftest import in_child, training_files

HOUR = 3600.0


def jumping(real):
    """A clock reading `real` plus jumps: +8 h on every 7th read, -1 h on every 11th."""
    state = {"reads": 0, "offset": 0.0}

    def clock() -> float:
        state["reads"] += 1
        if state["reads"] % 7 == 0:
            state["offset"] += 8 * HOUR
        if state["reads"] % 11 == 0:
            state["offset"] -= HOUR
        return real() + state["offset"]

    return clock


def train_and_analyse_with_jumping_clocks(out: Path) -> None:
    import tqdm.std

    from grokking.analysis import progress
    from grokking.train import train

    for name in ("time", "monotonic", "perf_counter"):
        setattr(time, name, jumping(getattr(time, name)))
    tqdm.std.time = time.time  # tqdm reads its own reference to time.time
    progress.SAVE_EVERY_SECONDS = 1.0  # a time-based save in the analysis pass: the jumps reach it too
    train(tiny_config(), out, progress=True)
    progress.analyze(out, progress=True)


def test_clock_jumps_change_no_cadence_and_no_byte(tmp_path: Path, capfd) -> None:
    from grokking.analysis.progress import analyze
    from grokking.train import train

    reference, out = tmp_path / "reference", tmp_path / "jumpy"
    assert in_child(lambda: (train(tiny_config(), reference, progress=False), analyze(reference, progress=False))) == 0
    capfd.readouterr()
    assert in_child(lambda: train_and_analyse_with_jumping_clocks(out)) == 0
    err = capfd.readouterr().err
    assert "60/60" in err and "4/4" in err and "Traceback" not in err  # both bars reached their end
    assert training_files(out) == training_files(reference)
    assert (out / "analysis.csv").read_bytes() == (reference / "analysis.csv").read_bytes()
