"""The metric lens report (`grokking metric-lens`): over scale from a sweep directory, over training time
from a run directory; digit addition trained as a language-model task."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from grokking.analysis.metric_lens import length_fits
from grokking.analysis.progress import analyze
from grokking.cli import app
from grokking.config import RunConfig, preset_config
from grokking.errors import UserError
from grokking.reports import write_report
from grokking.reports.metric_lens import write_metric_lens
from grokking.train import train

from conftest import tiny_config

# Two-digit addition on a small model: a few seconds of training.
TINY_ADDITION = {
    "n_digits": "2",
    "n_train": "500",
    "eval_examples": "40",
    "n_layers": "1",
    "d_model": "16",
    "n_heads": "2",
    "d_head": "8",
    "d_mlp": "32",
    "steps": "40",
    "eval_every": "20",
    "checkpoint_every": "20",
    "warmup_steps": "5",
}


def tiny_addition(**overrides: str) -> RunConfig:
    cfg = preset_config("addition-cpu")
    for key, value in {**TINY_ADDITION, **overrides}.items():
        cfg.set(key, value)
    return cfg


def fake_sweep(root: Path, per_token: dict[int, float], length: int = 5) -> Path:
    """A sweep directory (sweep.json + runs/) with hand-written final metrics: per-token correctness p per
    scale, independent tokens, so exact match of L tokens is p^L and edit distance L(1 - p), exactly the
    mirage model. One more run is listed as pending, which the lens must skip."""
    runs = []
    for scale, p in per_token.items():
        name = f"d_model={scale}_seed=0"
        row = {
            "step": 100,
            "test_loss": 1.0 - p,
            "test_exact_match": p**length,
            "test_per_token_acc": p,
            "test_edit_distance": length * (1 - p),
            "test_log_likelihood": math.log(p),
            "test_brier": 1 - p,
        }
        row |= {f"test_exact_match_L{n}": p**n for n in range(1, length + 1)}
        row |= {f"test_edit_distance_L{n}": n * (1 - p) for n in range(1, length + 1)}
        (root / "runs" / name).mkdir(parents=True)
        pd.DataFrame([{**row, "step": 0}, row]).to_csv(root / "runs" / name / "metrics.csv", index=False)
        runs.append({"name": name, "params": {"d_model": scale, "seed": 0}, "dir": f"runs/{name}", "status": "done"})
    runs.append({"name": "d_model=999_seed=0", "params": {"d_model": 999, "seed": 0}, "dir": "runs/d_model=999_seed=0", "status": "pending"})
    spec = {"preset": "addition-cpu", "grid": {"d_model": [*per_token, 999]}, "seeds": [0], "set": {}, "steps": None, "runs": runs}
    (root / "sweep.json").write_text(json.dumps(spec))
    return root


def test_length_fits_recover_the_mirage_model() -> None:
    means = pd.DataFrame([{f"test_exact_match_L{n}": 0.8**n for n in range(1, 6)} | {f"test_edit_distance_L{n}": 0.2 * n for n in range(1, 6)}])
    fit = length_fits(means).iloc[0]
    assert fit.acc_log_slope == pytest.approx(math.log(0.8)) and fit.acc_per_token_from_slope == pytest.approx(0.8)
    assert fit.acc_log_r2 == pytest.approx(1.0) and fit.acc_log_points == 5
    assert fit.acc_linear_r2 < 0.999  # geometric, not linear
    assert fit.edit_slope == pytest.approx(0.2) and fit.edit_r2 == pytest.approx(1.0)


def test_scale_lens_on_the_mirage_model(tmp_path: Path) -> None:
    """p rising smoothly with scale: exact match of 5 tokens breaks through, edit distance does not."""
    per_token = {8: 0.2, 16: 0.35, 32: 0.5, 64: 0.65, 128: 0.8, 256: 0.95}
    sweep = fake_sweep(tmp_path / "sweep", per_token)
    page = write_metric_lens(sweep).read_text()
    scores = pd.read_csv(sweep / "metric_lens.csv").set_index("metric")
    assert scores.loc["test_per_token_acc", "emergence_score"] == pytest.approx(5.0)  # a straight line: n - 1
    assert scores.loc["test_edit_distance", "emergence_score"] == pytest.approx(5.0)  # oriented: falling is better
    assert scores.loc["test_edit_distance", "direction"] == -1
    assert scores.loc["test_exact_match", "emergence_score"] > 1.5 * scores.loc["test_edit_distance", "emergence_score"]  # 9.1 vs 5
    by_scale = pd.read_csv(sweep / "metric_lens_by_scale.csv").set_index("d_model")
    assert by_scale.loc[64, "acc_per_token_from_slope"] == pytest.approx(0.65)
    assert by_scale.loc[64, "edit_r2"] == pytest.approx(1.0)
    assert "target length" in page and "slope" in page and "d_model=999_seed=0 (status pending)" in page
    assert "Plotly.newPlot" in page and not re.search(r"<(script|link|img)[^>]*\b(src|href)=", page)  # opens offline


@pytest.mark.slow
def test_scale_lens_on_a_trained_digit_addition_sweep(tmp_path: Path) -> None:
    """On a directory written by the sweep machinery itself (`grokking sweep`), so the contract is checked."""
    from grokking.experiments import SweepSpec, run_sweep

    sweep = tmp_path / "sweep"
    run_sweep(
        SweepSpec("addition-cpu", {"d_model": [8, 16]}, [0, 1], {k: v for k, v in TINY_ADDITION.items() if k != "d_model"}), sweep, progress=False
    )
    result = CliRunner().invoke(app, ["metric-lens", str(sweep)])
    assert result.exit_code == 0, result.output
    assert "test_exact_match" in result.output and "metric_lens.html" in result.output
    scores = pd.read_csv(sweep / "metric_lens.csv")
    assert {"test_exact_match", "test_edit_distance", "test_log_likelihood", "test_brier", "test_exact_match_L3"} <= set(scores.metric)
    assert (scores.n_points == 2).all()
    by_scale = pd.read_csv(sweep / "metric_lens_by_scale.csv")
    assert by_scale.d_model.tolist() == [8, 16] and by_scale.n_runs.tolist() == [2, 2]
    page = (sweep / "metric_lens.html").read_text()
    assert "training step" in page and "only 2 scales" in page


@pytest.mark.slow
def test_digit_addition_trains_and_the_lens_reads_its_metrics(tmp_path: Path) -> None:
    """A 2-layer model learns 2-digit addition in a few hundred steps; every evaluation row carries the lens."""
    cfg = tiny_addition(
        n_train="3000",
        eval_examples="200",
        n_layers="2",
        d_model="48",
        n_heads="4",
        d_head="12",
        d_mlp="192",
        steps="700",
        eval_every="100",
        checkpoint_every="100",
        warmup_steps="50",
        lr="3e-3",
    )
    train(cfg, tmp_path / "add", progress=False)
    metrics = pd.read_csv(tmp_path / "add" / "metrics.csv")
    for split in ("train", "test"):
        for column in (
            "acc",
            "exact_match",
            "per_token_acc",
            "edit_distance",
            "log_likelihood",
            "brier",
            "subset_acc_k5",
            "exact_match_L1",
            "edit_distance_L3",
        ):
            assert f"{split}_{column}" in metrics, f"{split}_{column}"
    first, last = metrics.iloc[0], metrics.iloc[-1]
    assert (metrics.test_acc == metrics.test_exact_match).all()
    assert first.test_exact_match < 0.05 and last.test_exact_match > 0.9
    assert last.test_edit_distance < first.test_edit_distance and last.test_log_likelihood > first.test_log_likelihood
    write_metric_lens(tmp_path / "add")
    assert set(pd.read_csv(tmp_path / "add" / "metric_lens.csv").metric) >= {"test_exact_match", "test_brier"}
    # `grokking report` on a digit-addition run is the same lens, as report.html.
    assert "Emergence score" in write_report(tmp_path / "add").read_text()


def test_time_lens_on_a_modular_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(tiny_config(), run, progress=False)
    with pytest.raises(UserError, match="grokking analyze"):
        write_metric_lens(run)
    analyze(run, progress=False)
    page = write_metric_lens(run).read_text()
    scores = pd.read_csv(run / "metric_lens.csv").set_index("metric")
    assert list(scores.index) == ["test_acc", "test_log_likelihood", "restricted_loss", "excluded_loss"]
    assert (scores.n_points == len(pd.read_csv(run / "analysis.csv"))).all()
    assert scores.loc["excluded_loss", "direction"] == 1 and scores.loc["restricted_loss", "direction"] == -1
    assert scores.loc["test_log_likelihood", "last"] == pytest.approx(-pd.read_csv(run / "analysis.csv").test_loss.iloc[-1])
    assert "emergence score" in page


def test_user_mistakes_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="neither a sweep directory"):
        write_metric_lens(tmp_path)
    two_keys = tmp_path / "two"
    two_keys.mkdir()
    (two_keys / "sweep.json").write_text(json.dumps({"preset": "addition-cpu", "seeds": [0], "grid": {"d_model": [8], "n_layers": [1]}, "runs": []}))
    with pytest.raises(UserError, match="exactly one scale key"):
        write_metric_lens(two_keys)
    nothing_done = tmp_path / "pending"
    nothing_done.mkdir()
    (nothing_done / "sweep.json").write_text(
        json.dumps(
            {
                "preset": "addition-cpu",
                "seeds": [0],
                "grid": {"d_model": [8]},
                "runs": [{"name": "a", "params": {"d_model": 8, "seed": 0}, "dir": "runs/a", "status": "running"}],
            }
        )
    )
    with pytest.raises(UserError, match="no finished run"):
        write_metric_lens(nothing_done)
    result = CliRunner().invoke(app, ["metric-lens", str(tmp_path / "missing")])
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
