"""Language-model training end to end on a generated language, and its resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grokking import load_run
from grokking.analysis.early_stopping import early_stopping
from grokking.analysis.progress import analyze
from grokking.reports import write_report
from grokking.train import train

from conftest import tiny_lm


@pytest.mark.slow
def test_a_tiny_lm_learns_question_formation_in_distribution(tmp_path: Path) -> None:
    train(tiny_lm(), tmp_path / "qf", progress=False)
    metrics = load_run(tmp_path / "qf").metrics
    first, last = metrics.iloc[0], metrics.iloc[-1]
    assert {"val_acc", "gen_acc", "val_linear_rule_rate"} <= set(metrics.columns)
    assert last.train_loss < 0.5 * first.train_loss
    assert last.val_acc >= 0.9, "the in-distribution rule (front the first auxiliary) is easy to learn"
    assert first.val_acc < 0.6
    # The structural analysis and report run on it, with the columns.
    table = analyze(tmp_path / "qf", sample=100, progress=False)
    for column in (
        "weight_norm",
        "weight_norm_per_layer",
        "attn_entropy",
        "attn_sparsity",
        "tscore",
        "tparseval",
        "attn_entropy_l1h1",
        "val_acc",
        "gen_acc",
    ):
        assert column in table, column
    assert table.attn_sparsity.equals(-table.attn_entropy)
    assert 0 <= table.tparseval.min() and table.tparseval.max() <= 1
    page = write_report(tmp_path / "qf").read_text()
    assert "SCI chart" in page and "early stop" in page
    # The patience flag changes the report's early-stopping rule, computed from every evaluation in metrics.csv.
    stopping = early_stopping(metrics, patience=1)
    page = write_report(tmp_path / "qf", patience=1).read_text()
    assert "patience 1 evaluations" in page
    assert f"step {stopping.step_at_patience_stop}: gen {stopping.gen_at_patience_stop:.1%}" in page
    assert f"step {stopping.final_step}: gen {last.gen_acc:.1%}" in page


def test_lm_run_resumes_bit_identically(tmp_path: Path) -> None:
    train(tiny_lm(steps="40", eval_every="20", checkpoint_every="20", dropout="0.1", lr_schedule="constant"), tmp_path / "a", progress=False)
    train(tiny_lm(steps="80", eval_every="20", checkpoint_every="20", dropout="0.1", lr_schedule="constant"), tmp_path / "a", progress=False)
    train(tiny_lm(steps="80", eval_every="20", checkpoint_every="20", dropout="0.1", lr_schedule="constant"), tmp_path / "b", progress=False)
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    for k, v in a.weights(80).items():
        assert torch.equal(v, b.weights(80)[k]), k
