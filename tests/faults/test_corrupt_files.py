"""Promise: a corrupt or hand-edited file gets one line naming it, never a traceback, and the rest of the run loads.

Cases: metrics.csv with a line cut short (in the middle and at the end), config.json with unknown keys or a
value of the wrong type, and an analysis.csv written by an older version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from grokking import load_run
from grokking.errors import UserError

from conftest import tiny_config
from faults.conftest import in_child


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grokking.analysis.progress import analyze
    from grokking.train import train

    out = tmp_path_factory.mktemp("corrupt") / "run"
    assert in_child(lambda: (train(tiny_config(), out, progress=False), analyze(out, progress=False))) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / "run"))


def one_line(text: str, path: Path) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in text, text
    return lines[0]


def test_metrics_line_cut_short_is_named_and_other_rows_load(trained: Path, tmp_path: Path, capsys) -> None:
    run = copy_of(trained, tmp_path)
    path = run / "metrics.csv"
    lines = path.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:2])  # a middle row cut to two fields
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:7])  # and the last row cut mid-number, no newline
    capsys.readouterr()
    metrics = load_run(run).metrics
    warning = one_line(capsys.readouterr().err, path)
    assert "skipped 2 incomplete line(s) (line 4, 8)" in warning
    original = pd.read_csv(trained / "metrics.csv")
    pd.testing.assert_frame_equal(metrics, original.drop(index=[2, len(original) - 1]).reset_index(drop=True))


def test_config_with_unknown_keys_loads_with_a_line_each(trained: Path, tmp_path: Path, capsys) -> None:
    run = copy_of(trained, tmp_path)
    path = run / "config.json"
    data = json.loads(path.read_text())
    data["note"] = "hand-written"
    data["model"]["shiny_new_option"] = 1
    path.write_text(json.dumps(data))
    capsys.readouterr()
    loaded = load_run(run)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(str(path) in line for line in lines)
    assert "'note'" in lines[0] and "'model.shiny_new_option'" in lines[1]
    assert loaded.config.to_dict() == load_run(trained).config.to_dict()
    assert len(loaded.metrics) == 7 and loaded.model(60) is not None


def test_config_value_of_the_wrong_type(trained: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_of(trained, tmp_path)
    path = run / "config.json"
    data = json.loads(path.read_text())
    data["task"]["p"] = "23"  # readable as the int it should be: loads, with one line
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert load_run(run).config.task.p == 23
    assert "task.p is '23' (str), read as 23" in one_line(capsys.readouterr().err, path)

    data["train"]["lr"] = "fast"  # not readable: one line through the CLI, exit code 2
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"config.json: train.lr should be float, got 'fast'"):
        load_run(run)
    from grokking import cli

    monkeypatch.setattr(sys, "argv", ["grokking", "analyze", str(run)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    one_line(err.replace(f"warning: {path}: task.p is '23' (str), read as 23\n", ""), path)


def test_analysis_from_an_older_version_is_named_and_recomputed(trained: Path, tmp_path: Path) -> None:
    from grokking.analysis.progress import analyze
    from grokking.reports import write_report

    run = copy_of(trained, tmp_path)
    table = pd.read_csv(run / "analysis.csv")
    table.drop(columns=["restricted_loss", "gini_W_E"]).to_csv(run / "analysis.csv", index=False)
    summary = json.loads((run / "analysis.json").read_text())
    del summary["signature"]  # what an analysis from before signatures looks like
    (run / "analysis.json").write_text(json.dumps(summary))
    with pytest.raises(UserError) as caught:
        write_report(run)
    message = str(caught.value)
    assert "\n" not in message and f"{run / 'analysis.csv'} is from an older version" in message
    assert "restricted_loss, gini_W_E" in message and "grokking analyze" in message
    assert load_run(run).model(60) is not None  # the run itself still loads
    assert in_child(lambda: analyze(run, progress=False)) == 0  # and re-analysing replaces the old table
    assert (run / "analysis.csv").read_bytes() == (trained / "analysis.csv").read_bytes()
    assert write_report(run).is_file()
