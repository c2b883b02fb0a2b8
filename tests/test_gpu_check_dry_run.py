"""`benchmarks/gpu_check.sh --dry-run`: every step of the GPU check, on the CPU at toy sizes, so the script that a
lent GPU runs cannot rot between loans."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grokking.config import PRESETS

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_what_a_device_call_brings_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "GROKKING_DATA_CACHE": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((out / "gpu_check.json").read_text())
    steps = results["steps"]
    assert results["mode"].startswith("dry-run")
    assert list(steps) == ["environment", "cuda_tests", "lm_speed", "batched", "profile", "nanda_p113", "nanda_p113_analyze", "icl_speed"]
    assert {name: e["status"] for name, e in steps.items()} == {
        **{name: "ok" for name in steps},
        "icl_speed": "ok" if "icl-paper" in PRESETS else "skipped",
    }
    if not torch.cuda.is_available():
        assert set(steps["cuda_tests"]["counts"]) == {"skipped"} and steps["cuda_tests"]["counts"]["skipped"] > 0
    speed = steps["lm_speed"]["rows"]
    assert [(r["preset"], r["precision"]) for r in speed] == [("qf-paper", "fp32"), ("qf-paper", "bf16"), ("qf-cpu", "fp32"), ("qf-cpu", "bf16")]
    for row in speed:
        # Evaluation and checkpoints only add time; both figures are rounded to 3 decimals, so they may tie.
        assert row["ms_per_step"] > 0 and row["projected_full_run_h"] >= row["training_only_h"] > 0
        assert row["evaluations"] == row["full_steps"] // PRESETS[row["preset"]][1]().train.eval_every + 1
    batched = steps["batched"]
    assert batched["seeds"] == 2 and len(batched["test_acc_per_seed"]) == 2
    assert batched["run_cost_ratio"] > 0 and batched["step_cost_ratio"] > 0
    assert [r["preset"] for r in steps["profile"]["rows"]] == ["nanda-p113", "nanda-p113", "qf-paper", "qf-paper"]
    assert steps["nanda_p113"]["last_step"] == 40 and 0 <= steps["nanda_p113"]["test_acc"] <= 1
    assert isinstance(steps["nanda_p113_analyze"]["key_frequencies"], list)
    # What the device call brings back: at most 8 files, named in letters, digits, '.', '_' and '-'.
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["gpu_check.json", "gpu_check.md", "gpu_check.log", "profile.txt", "nanda-p113-metrics.csv", "nanda-p113-analysis.json"])
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files)
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | " in table for name in steps)
