"""The run directory type owns its files: names, cheap reads without torch, and `--fresh` clearing them all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from grokking.config import preset_config
from grokking.errors import UserError
from grokking.store import DERIVED, DERIVED_FILES, RunDir


def tiny_run(path: Path) -> RunDir:
    """A run directory with a config and two metrics rows, no checkpoints: what a reader of tables sees."""
    run = RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    run.write_config(preset_config("quick"))
    run.metrics_path.write_text("step,train_loss,test_loss,train_acc,test_acc\n0,4.7,4.7,0.01,0.01\n100,0.01,3.2,1.0,0.2\n")
    return run


def test_reading_config_and_metrics_does_not_import_torch(tmp_path):
    run = tiny_run(tmp_path / "run")
    code = (
        "import sys\n"
        "from grokking.store import RunDir\n"
        f"run = RunDir({str(run.path)!r})\n"
        "cfg, table = run.read_config(), run.read_metrics_table()\n"
        "print(cfg.preset, cfg.task.p, list(table.step), run.last_metric_step())\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'safetensors.torch'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == f"quick {preset_config('quick').task.p} [0, 100] 100"
    assert out[1] == "[]"


def test_every_derived_file_has_a_property_and_fresh_removes_it(tmp_path):
    run = tiny_run(tmp_path / "run")
    for attribute, name in DERIVED.items():
        assert getattr(run, attribute) == run.path / name
        getattr(run, attribute).write_text("x")
    (run.path / "notes.txt").write_text("mine")
    run.clear()
    assert sorted(p.name for p in run.path.iterdir()) == ["notes.txt"]
    assert "metric_lens.csv" in DERIVED_FILES and "metric_lens.html" in DERIVED_FILES


def test_readme_lists_every_file():
    readme = (Path(__file__).parents[1] / "checkpoints" / "README.md").read_text()
    missing = [name for name in (*DERIVED_FILES, "config.json", "metrics.csv", "resume.safetensors", ".lock") if f"`{name}`" not in readme]
    assert missing == []


def test_derived_tables_fail_in_one_line(tmp_path):
    run = tiny_run(tmp_path / "run")
    with pytest.raises(UserError, match="has no analysis.csv; run `grokking analyze"):
        run.read_table(run.analysis_path)
    run.analysis_path.write_text("step,test_acc\n0,0.5\n")
    with pytest.raises(UserError, match="older version or was edited \\(no column restricted_loss\\)"):
        run.read_table(run.analysis_path, ["step", "restricted_loss"])
    assert list(run.read_table(run.analysis_path, ["step"]).test_acc) == [0.5]
