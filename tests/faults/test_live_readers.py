"""Promise: `grokking analyze` and `grokking report` on a run that is still training see only whole checkpoints
(never a torn file), and re-running them later picks up the rest.

A forked training pauses at step 40 (so one analysis surely lands mid-run), then runs on while this process
analyses it again and again; every pass must skip nothing and list only checkpoints that exist whole.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from grokking.store import DERIVED_FILES, RunDir

from conftest import tiny_config
from faults.conftest import pause_training_at, start_child, wait_for


def test_analyze_and_report_while_training_writes(tmp_path: Path) -> None:
    from grokking.analysis.progress import analyze
    from grokking.reports import write_report
    from grokking.train import train

    cfg = tiny_config(steps="200", eval_every="5", checkpoint_every="10")
    out, paused, go = tmp_path / "run", tmp_path / "paused", tmp_path / "go"
    pid = start_child(lambda: (pause_training_at(40, paused, go), train(cfg, out, progress=False)))
    try:
        wait_for(paused, pid)
        table = analyze(out, progress=False)
        assert list(table.step) == [0, 10, 20, 30, 40] == RunDir(out).checkpoint_steps()
        assert write_report(out).is_file()
    finally:
        go.touch()

    passes_during_training = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        table = analyze(out, progress=False)
        skipped = json.loads((out / "analysis.json").read_text())["skipped"]
        assert skipped == {} and set(table.step) <= set(RunDir(out).checkpoint_steps())
        passes_during_training += 1
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and passes_during_training >= 1

    table = analyze(out, progress=False)  # later: the rest is picked up
    assert list(table.step) == list(range(0, 201, 10))
    fresh = Path(shutil.copytree(out, tmp_path / "fresh"))
    for name in DERIVED_FILES:
        (fresh / name).unlink(missing_ok=True)
    analyze(fresh, progress=False)
    assert (out / "analysis.csv").read_bytes() == (fresh / "analysis.csv").read_bytes()
    assert write_report(out).is_file()
