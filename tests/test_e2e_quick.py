"""The demo end to end: `quick` memorises, then groks; analysis and report see the circuit form.

`quick_run` (tests/conftest.py) is the session's one trained and analysed `quick` run; tests that write copy it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from grokking import load_run
from grokking.analysis import progress
from grokking.reports.modular import write_report


@pytest.mark.slow
def test_quick_memorises_first_and_generalises_much_later(quick_run: Path) -> None:
    m = load_run(quick_run).metrics
    memorised = int(m.step[m.train_acc >= 0.99].iloc[0])
    generalised = int(m.step[m.test_acc >= 0.95].iloc[0])
    assert m.set_index("step").test_acc[memorised] < 0.2, "test accuracy is still low when training is memorised"
    assert generalised >= 4 * memorised
    assert m.test_acc.iloc[-1] >= 0.99 and m.test_loss.iloc[-1] < 0.01


@pytest.mark.slow
def test_progress_measures_move_before_the_test_loss(quick_run: Path) -> None:
    table = pd.read_csv(quick_run / "analysis.csv").set_index("step")
    summary = json.loads((quick_run / "analysis.json").read_text())
    assert 2 <= len(summary["key_frequencies"]) <= 8
    assert set(summary["key_frequencies"]) & set(summary["key_frequencies_from_embedding"])
    ph = summary["phases"]
    mem, circ, clean = ph["memorisation_end"], ph["circuit_formation_end"], ph["cleanup_end"]
    assert 0 < mem < circ < clean <= table.index.max()
    mid = table.index[(table.index > mem) & (table.index < circ)][len(table.index[(table.index > mem) & (table.index < circ)]) // 2]
    assert table.restricted_loss[mid] < 0.1 * table.test_loss[mid], "restricted loss falls before the test loss"
    assert table.excluded_loss[circ] > 10 * table.excluded_loss[mem], "excluded loss rises in circuit formation"
    assert table.gini_W_E.iloc[-1] > 2 * table.gini_W_E.iloc[0] and table.gini_W_L.iloc[-1] > 2 * table.gini_W_L.iloc[0]
    assert table.total_sq_weight_norm[clean] < 0.9 * table.total_sq_weight_norm[circ], "weights fall in cleanup"
    first_99 = table.index[table.test_acc >= 0.99][0]
    assert clean >= first_99, "the last boundary comes after the test-accuracy jump"


@pytest.mark.slow
def test_reanalysis_computes_only_missing_checkpoints(quick_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = shutil.copytree(quick_run, tmp_path / "run")
    before = pd.read_csv(run / "analysis.csv")
    before.iloc[:-5].to_csv(run / "analysis.csv", index=False)  # as if interrupted
    calls: list[int] = []
    original = progress.ModularPlan.row
    monkeypatch.setattr(progress.ModularPlan, "row", lambda plan, step: calls.append(step) or original(plan, step))
    after = progress.analyze(run, progress=False)
    assert calls == before.step.tolist()[-5:]
    pd.testing.assert_frame_equal(after, before)


@pytest.mark.slow
def test_report_is_self_contained(quick_run: Path, tmp_path: Path) -> None:
    page = write_report(shutil.copytree(quick_run, tmp_path / "run")).read_text()
    # Offline: plotly.js is inlined and no script, stylesheet or image is fetched from elsewhere.
    assert "Plotly.newPlot" in page and len(page) > 3_000_000
    assert not re.search(r"<(script|link|img)[^>]*\b(src|href)=", page)
    for heading in ("Loss and accuracy", "Progress measures", "Fourier norms", "Neuron clusters", "Attention and neuron"):
        assert heading in page
