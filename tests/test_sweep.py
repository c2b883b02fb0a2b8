"""Sweeps: grid parsing, the sweep directory contract, resume after Ctrl-C, retries, Ray, the sweep report."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from grokking.analysis.sweep import PAPER_EPOCHS_BY_FRAC_TRAIN
from grokking.cli import app
from grokking.errors import UserError
from grokking.experiments import SweepSpec, load_sweep, run_sweep
from grokking.experiments.grid import grid_params, parse_grid, parse_seeds, run_name
from grokking.experiments.local import LocalExecutor
from grokking.experiments.ray_executor import RESUME_FILES, read_tree, train_task, write_tree
from grokking.experiments.sweep import Sweep, SweepRun
from grokking.reports.sweep import write_sweep_report

from conftest import CLI, TINY_SETS

# tiny_config's --set values but frac_train, which the sweeps' grid sets: 100 steps train in about a second.
TINY = {key: value for key, value in TINY_SETS.items() if key != "frac_train"}


def tiny_spec(steps: int = 100, seeds: tuple[int, ...] = (0, 1)) -> SweepSpec:
    return SweepSpec("quick", {"frac_train": [0.5, 0.8]}, list(seeds), dict(TINY), steps)


def cli_args(spec: SweepSpec, out: Path) -> list[str]:
    args = ["sweep", spec.preset, "--seeds", ",".join(map(str, spec.seeds)) + ",", "--out", str(out), "--steps", str(spec.steps)]
    for key, values in spec.grid.items():
        args += ["--grid", f"{key}={','.join(map(str, values))}"]
    for key, value in spec.set.items():
        args += ["--set", f"{key}={value}"]
    return args


def grokking_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, **kwargs)


@pytest.fixture
def one_thread():
    """Local runs with the thread count a 1-CPU Ray task uses, so both executors compute bit-identical runs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- parsing ---------------------------------------------------------------------------------------
def test_grid_values_take_their_config_types_and_runs_are_named_in_flag_order() -> None:
    grid = parse_grid(["n_layers=2,4", "weight_decay=0.3,1"], "qf-cpu")
    assert grid == {"n_layers": [2, 4], "weight_decay": [0.3, 1.0]}
    assert isinstance(grid["n_layers"][0], int) and isinstance(grid["weight_decay"][1], float)
    names = [run_name(p) for p in grid_params(grid, [0, 1])]
    assert names[:3] == ["n_layers=2_weight_decay=0.3_seed=0", "n_layers=2_weight_decay=0.3_seed=1", "n_layers=2_weight_decay=1.0_seed=0"]
    assert len(names) == 8
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("0,3,7") == [0, 3, 7] and parse_seeds("5,") == [5]
    for bad in (["n_layers=2", "n_layers=4"], ["seed=1,2"], ["n_layers=2,2"]):
        with pytest.raises(UserError):
            parse_grid(bad, "qf-cpu")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "n_layers="], "--grid expects key=value"),
        (["--grid", "n_layers"], "--grid expects key=value"),
        (["--grid", "=1,2"], "--grid expects key=value"),
        (["--grid", "n_layer=1,2"], "did you mean 'n_layers'"),
        (["--grid", "n_layers=two"], "cannot read 'two'"),
        (["--seeds", "many"], "--seeds expects"),
    ],
)
def test_malformed_sweeps_fail_in_one_line_with_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    done = grokking_cli("sweep", "quick", *args, "--out", str(tmp_path / "sweep"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "sweep").exists()


def test_unknown_preset_fails_in_one_line(tmp_path: Path) -> None:
    done = grokking_cli("sweep", "quik", "--grid", "n_layers=1,2", "--out", str(tmp_path / "sweep"))
    assert done.returncode == 2 and "did you mean 'quick'" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_unreachable_ray_address_fails_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    done = grokking_cli(
        "sweep", "quick", "--grid", "n_layers=1,2", "--executor", "ray", "--address", "127.0.0.1:1", "--out", str(tmp_path / "sweep"), timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: cannot reach a Ray cluster at 127.0.0.1:1")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "sweep").exists()


# -- running, resuming, retrying -----------------------------------------------------------------
@pytest.mark.slow
def test_local_and_ray_sweeps_give_the_same_runs_and_summary(tmp_path: Path, one_thread: None) -> None:
    pytest.importorskip("ray")
    from grokking.experiments.ray_executor import RayExecutor

    local = run_sweep(tiny_spec(), tmp_path / "local", LocalExecutor(), progress=False)
    ray = run_sweep(tiny_spec(), tmp_path / "ray", RayExecutor(max_parallel=2), progress=False)
    for sweep in (local, ray):
        state = json.loads((sweep.path / "sweep.json").read_text())
        assert state["preset"] == "quick" and state["grid"] == {"frac_train": [0.5, 0.8]} and state["seeds"] == [0, 1]
        assert state["steps"] == 100 and state["set"] == TINY
        assert [r["name"] for r in state["runs"]] == [
            "frac_train=0.5_seed=0",
            "frac_train=0.5_seed=1",
            "frac_train=0.8_seed=0",
            "frac_train=0.8_seed=1",
        ]
        assert all(r["status"] == "done" and r["attempts"] == 1 and r["error"] is None and r["seconds"] > 0 for r in state["runs"])
        assert all(r["dir"] == f"runs/{r['name']}" and (sweep.path / r["dir"] / "config.json").is_file() for r in state["runs"])
        assert not list((sweep.path / "runs").glob(".*")), "the Ray driver's token file is removed"
        write_sweep_report(sweep.path)
    for run in local.runs:
        assert (run.dir / "metrics.csv").read_bytes() == (tmp_path / "ray" / "runs" / run.name / "metrics.csv").read_bytes()
    a, b = (pd.read_csv(tmp_path / d / "summary.csv") for d in ("local", "ray"))
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)
    assert list(a.frac_train) == [0.5, 0.8] and list(a.done) == [2, 2]
    table = load_sweep(tmp_path / "ray").table()
    assert list(table.columns[:4]) == ["name", "frac_train", "seed", "status"] and len(table) == 4
    assert load_sweep(tmp_path / "ray").runs[0].run().metrics.step.iloc[-1] == 100


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_finishes_without_redoing_runs(tmp_path: Path) -> None:
    spec, out = tiny_spec(steps=400), tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*CLI, *cli_args(spec, out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "sweep.json").is_file() and any(r.status == "done" for r in load_sweep(out).runs):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Re-run the same command to resume" in stderr and "Traceback" not in stderr
    stopped = load_sweep(out)
    assert "running" not in {r.status for r in stopped.runs}
    finished = [r for r in stopped.runs if r.status == "done"]
    assert 1 <= len(finished) < 4
    before = {r.name: (r.dir / "metrics.csv").stat().st_mtime_ns for r in finished}

    done = grokking_cli(*cli_args(spec, out), timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(finished)} already done" in done.stdout
    resumed = load_sweep(out)
    assert all(r.status == "done" for r in resumed.runs)
    for run in resumed.runs:
        if run.name in before:
            assert run.attempts == 1 and (run.dir / "metrics.csv").stat().st_mtime_ns == before[run.name]
        assert run.run().metrics.step.tolist() == list(range(0, 401, 10))


def test_a_failed_run_is_reported_then_retried_on_rerun(tmp_path: Path) -> None:
    spec, out = tiny_spec(steps=20, seeds=(0,)), tmp_path / "sweep"
    blocked = out / "runs" / "frac_train=0.8_seed=0"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("a file where the run directory should go")
    result = CliRunner().invoke(app, cli_args(spec, out))
    assert result.exit_code == 1
    assert "failed: frac_train=0.8_seed=0 (attempt 1): FileExistsError" in result.output
    state = {r.name: r for r in load_sweep(out).runs}
    assert state["frac_train=0.5_seed=0"].status == "done"
    assert state["frac_train=0.8_seed=0"].status == "failed" and "FileExistsError" in state["frac_train=0.8_seed=0"].error

    blocked.unlink()
    result = CliRunner().invoke(app, cli_args(spec, out))
    assert result.exit_code == 0, result.output
    state = {r.name: r for r in load_sweep(out).runs}
    assert (state["frac_train=0.5_seed=0"].attempts, state["frac_train=0.8_seed=0"].attempts) == (1, 2)
    assert state["frac_train=0.8_seed=0"].status == "done" and state["frac_train=0.8_seed=0"].error is None
    # The same directory with another grid is refused in one line; more seeds extend the sweep.
    with pytest.raises(UserError, match="holds another sweep"):
        run_sweep(SweepSpec("quick", {"frac_train": [0.5]}, [0], dict(TINY), 20), out, progress=False)
    assert len(run_sweep(tiny_spec(steps=20, seeds=(0, 1)), out, progress=False).runs) == 4


def test_ray_task_without_a_shared_disk_ships_the_run_directory_and_resumes(tmp_path: Path, one_thread: None) -> None:
    """The Ray task as a worker on another machine runs it: no token file visible, files go both ways."""
    spec = tiny_spec(steps=40, seeds=(0,))
    sweep = Sweep(tmp_path / "sweep", spec, [SweepRun("r", {"frac_train": 0.5, "seed": 0}, tmp_path / "sweep" / "runs" / "r")])
    out = sweep.runs[0].dir
    job = {"name": "r", "config": sweep.config(sweep.runs[0]).to_dict(), "out": str(out)}
    short = {**job, "config": {**job["config"], "train": {**job["config"]["train"], "steps": 20}}}
    first = train_task(short, str(tmp_path / "no-token"), {}, 1)
    assert first["status"] == "done" and not out.exists()
    write_tree(out, first["files"])
    assert set(read_tree(out, RESUME_FILES)) == set(RESUME_FILES)
    second = train_task(job, str(tmp_path / "no-token"), read_tree(out, RESUME_FILES), 1)
    assert second["status"] == "done" and "checkpoints/step_0000040.safetensors" in second["files"]
    write_tree(out, second["files"])
    # Resumed through the driver's copy, the run equals one trained straight through.
    straight = train_task({**job, "out": str(tmp_path / "straight")}, str(tmp_path / "no-token"), {}, 1)
    assert (out / "metrics.csv").read_bytes() == straight["files"]["metrics.csv"]
    assert (out / "checkpoints" / "step_0000040.safetensors").read_bytes() == straight["files"]["checkpoints/step_0000040.safetensors"]


# -- the report ----------------------------------------------------------------------------------
def hand_made_sweep(path: Path, key: str, curves: dict[tuple, tuple[list[float], list[float]]], running: tuple = ()) -> Sweep:
    """A sweep directory with hand-made metrics: {(grid value, seed): (val_acc curve, gen_acc curve)}."""
    runs = []
    for (value, seed), (val, gen) in curves.items():
        params = {key: value, "seed": seed}
        run = SweepRun(run_name(params), params, path / "runs" / run_name(params), "running" if (value, seed) in running else "done", 1)
        run.dir.mkdir(parents=True)
        pd.DataFrame({"step": [100 * i for i in range(len(val))], "test_acc": gen, "val_acc": val, "gen_acc": gen}).to_csv(
            run.dir / "metrics.csv", index=False
        )
        runs.append(run)
    sweep = Sweep(path, SweepSpec("qf-cpu", {key: sorted({v for v, _ in curves})}, [0, 1]), runs)
    sweep.save()
    return sweep


def test_language_sweep_report_has_success_fractions_and_early_stopping(tmp_path: Path) -> None:
    flat = [0.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    hand_made_sweep(
        tmp_path,
        "n_layers",
        {
            (2, 0): (flat, [0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3]),
            (2, 1): (flat, [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.9]),
            (4, 0): (flat, [0.1, 0.1, 0.4, 0.6, 0.9, 0.9, 1.0]),
            (4, 1): (flat, [0.1, 0.1, 0.4, 0.6, 0.9, 0.9, 0.95]),
        },
    )
    (tmp_path / "runs" / "n_layers=4_seed=0" / "analysis.csv").write_text("step,tscore,weight_norm,attn_sparsity\n600,0.9,30.0,-1.5\n")
    page = write_sweep_report(tmp_path, patience=2).read_text()
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("n_layers")
    assert summary.loc[2, "success_fraction"] == 0.5 and summary.loc[4, "success_fraction"] == 1.0
    assert summary.loc[4, "gen_at_end_mean"] == pytest.approx(0.975)
    # Val first reaches its max at step 100; patience 2 stops at step 300 (no improvement at 200, 300).
    assert summary.loc[2, "gen_at_max_val_mean"] == pytest.approx(0.25) and summary.loc[2, "step_at_patience_stop_mean"] == 300
    assert summary.loc[4, "gen_at_patience_stop_mean"] == pytest.approx(0.6)
    assert summary.loc[4, "tscore_final_mean"] == 0.9 and summary.loc[4, "analysed"] == 1 and summary.loc[2, "analysed"] == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 4 and set(runs.patience) == {2}
    assert "Early stopping vs extended training" in page and "patience 2" in page and "<script src=" not in page
    write_sweep_report(tmp_path, patience=4)
    assert pd.read_csv(tmp_path / "summary.csv").set_index("n_layers").loc[2, "step_at_patience_stop_mean"] == 500


def test_modular_sweep_report_counts_grokking_and_quotes_the_paper(tmp_path: Path) -> None:
    rising = [0.0, 0.5, 0.995, 1.0]
    sweep = hand_made_sweep(
        tmp_path,
        "frac_train",
        {
            (0.3, 0): (rising, rising),
            (0.3, 1): (rising, [0.0, 0.1, 0.2, 0.3]),
            (0.5, 0): (rising, [0.0, 0.99, 1.0, 1.0]),
            (0.5, 1): (rising, rising),
            (0.35, 0): (rising, rising),
        },  # a fraction the paper did not run
        running=((0.5, 1),),
    )
    for run in sweep.runs:  # modular metrics have no val/gen split
        metrics = pd.read_csv(run.dir / "metrics.csv").drop(columns=["val_acc", "gen_acc"])
        metrics.to_csv(run.dir / "metrics.csv", index=False)
    page = write_sweep_report(tmp_path).read_text()
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("frac_train")
    assert summary.loc[0.3, "grokked"] == 1 and summary.loc[0.3, "step_test_acc_99_mean"] == 200
    assert summary.loc[0.5, "done"] == 1 and summary.loc[0.5, "step_test_acc_99_mean"] == 100, "running runs are not aggregated"
    # Each setting quotes the paper's epochs at its own frac_train, and none where the paper has no run.
    assert summary.paper_epochs.drop(0.35).to_dict() == {frac: PAPER_EPOCHS_BY_FRAC_TRAIN[frac] for frac in (0.3, 0.5)}
    assert math.isnan(summary.loc[0.35, "paper_epochs"])
    assert "did not grok" in page and "not exactly 99% test accuracy" in page
