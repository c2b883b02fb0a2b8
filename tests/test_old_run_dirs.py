"""Run directories written by older code still load, reproduce their metrics and analyse.

tests/data/runs_44295cf/ holds tiny runs trained by commit 44295cf (see its README.md for the commands).
A change to the config format, the checkpoint layout, the task builders or the evaluation breaks these tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from grokking import load_run
from grokking.cli import app
from grokking.icl_objective import ICLObjective
from grokking.objectives import LMObjective, ModularObjective

OLD_RUNS = Path(__file__).parent / "data" / "runs_44295cf"
# name -> (objective that trained it, checkpoints kept in the fixture)
RUNS = {"modular-quick": (ModularObjective, [0, 30, 60]), "qf-cpu": (LMObjective, [0, 20]), "icl-cpu": (ICLObjective, [0, 20])}

# The stored losses came from the same fp32 forward pass on the same weights, and recomputing them on the
# machine that wrote them gives the identical float (measured difference 0.0 for every loss and accuracy).
# Another CPU's fp32 kernels sum in another order, which moves a loss by about 1e-6 relative; 1e-4 leaves a
# wide margin while staying far below what a wrong checkpoint, split or vocabulary changes: a neighbouring
# checkpoint's test loss differs by more than 1e-2 relative in every run here.
REL_TOL = 1e-4


@pytest.mark.parametrize("name", RUNS)
def test_old_run_loads_with_its_metrics_and_checkpoints(name: str) -> None:
    run = load_run(OLD_RUNS / name)
    train = run.config.train
    assert run.steps == RUNS[name][1]
    assert run.metrics.step.tolist() == list(range(0, train.steps + 1, train.eval_every))
    assert run.metrics.notna().all().all()


@pytest.mark.parametrize("name", RUNS)
def test_last_checkpoint_reproduces_its_stored_metrics(name: str) -> None:
    """Rebuilding the task from config.json and scoring the last checkpoint gives back the metrics row of its step."""
    run = load_run(OLD_RUNS / name)
    stored = run.metrics.set_index("step")
    objective_type = RUNS[name][0]
    objective = objective_type(run.task, run.config.train.batch_size, torch.device("cpu"), None)
    last, previous = run.steps[-1], run.steps[-2]
    row = objective.evaluate(run.model(last), None)
    for key in ("train_loss", "test_loss"):
        assert row[key] == pytest.approx(stored.at[last, key], rel=REL_TOL), key
    if "test_acc" in stored:
        assert row["test_acc"] == pytest.approx(stored.at[last, "test_acc"], rel=REL_TOL)
    # the tolerance tells checkpoints apart: the previous checkpoint does not give the last one's loss
    assert objective.evaluate(run.model(previous), None)["test_loss"] != pytest.approx(stored.at[last, "test_loss"], rel=100 * REL_TOL)


@pytest.mark.parametrize("name", RUNS)
def test_analyze_works_on_an_old_run(name: str, tmp_path: Path) -> None:
    run_dir = tmp_path / name
    shutil.copytree(OLD_RUNS / name, run_dir)
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--sample", "20"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(run_dir / "analysis.csv")
    assert table.step.tolist() == RUNS[name][1]
