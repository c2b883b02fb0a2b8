"""The tables of a sweep: one row per run and one per setting, for `grokking report-sweep` and notebooks.

Built from sweep.json and the run directories' metrics.csv / analysis.csv only, so it can be re-run
while the sweep is still going: per-run numbers cover every run with metrics, the per-setting
aggregates only finished ones. A *setting* is one combination of grid values; its rows aggregate over seeds.

- Language runs (metrics with gen_acc): which fraction of seeds ends with gen accuracy >= 80% (the
  paper's inverted U over depth), and what early stopping on validation accuracy would have reported
  instead (first max, and a patience rule).
- Modular runs: the step at which test accuracy first reaches 99%, next to the released numbers of
  Nanda et al. for a training-fraction sweep.
"""

from __future__ import annotations

import math

import pandas as pd

from grokking.analysis.early_stopping import GEN_SUCCESS, early_stopping
from grokking.errors import UserError
from grokking.experiments.sweep import Sweep, SweepRun

GROK_THRESHOLD = 0.99
# Nanda et al., released frac_train sweep: epochs (= full-batch steps) until their stopping rule fired.
PAPER_EPOCHS_BY_FRAC_TRAIN = {0.95: 970, 0.9: 1057, 0.8: 1339, 0.7: 897, 0.6: 1091, 0.5: 1618, 0.4: 3667, 0.3: 8996, 0.28: 16614, 0.25: 23276}
FINAL_MEASURES = ("tscore", "weight_norm", "attn_sparsity")


class SweepTables:
    """A sweep's runs as tables: `runs` (one row per run), `summary` (one row per setting) and `metrics`
    (each run's metrics.csv, by name, for the curves)."""

    def __init__(self, sweep: Sweep, patience: int = 5):
        if patience < 1:
            raise UserError(f"--patience must be >= 1 evaluations, got {patience}")
        self.sweep, self.patience = sweep, patience
        self.keys = list(sweep.grid)
        self.metrics = sweep.metrics()
        self.language = any("gen_acc" in m for m in self.metrics.values())
        self.settings = [setting_label(dict(zip(self.keys, combo))) for combo in _product(sweep.grid)]
        self.runs = pd.DataFrame([self._run_row(r) for r in sweep.runs])
        self.summary = pd.DataFrame([self._setting_row(label) for label in self.settings])

    def setting_x(self) -> list:
        """Plot positions of the settings: the grid values for one numeric key, else the labels."""
        values = self.sweep.grid[self.keys[0]] if len(self.keys) == 1 else []
        numeric = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return list(values) if numeric else self.settings

    def _run_row(self, run: SweepRun) -> dict:
        row = {
            "name": run.name,
            "setting": setting_label({k: run.params[k] for k in self.keys}),
            **run.params,
            "status": run.status,
            "attempts": run.attempts,
            "seconds": run.seconds,
        }
        m = self.metrics.get(run.name)
        if m is None:
            return row
        row["final_step"] = int(m.step.iloc[-1])
        if self.language:
            row.update(early_stopping(m, self.patience).to_dict())
            path = run.run_dir.analysis_path
            analysis = run.run_dir.read_table(path) if path.is_file() and path.stat().st_size else None
            if analysis is not None and len(analysis):
                last = analysis.iloc[-1]
                row.update({f"{c}_final": float(last[c]) for c in FINAL_MEASURES if c in last})
        else:
            grokked = m.step[m.test_acc >= GROK_THRESHOLD]
            row["final_test_acc"] = float(m.test_acc.iloc[-1])
            row["step_test_acc_99"] = int(grokked.iloc[0]) if len(grokked) else None
        return row

    def _setting_row(self, label: str) -> dict:
        runs = self.runs[self.runs.setting == label]
        done = runs[runs.status == "done"]
        first = runs.iloc[0]
        row = {**{k: first[k] for k in self.keys}, "runs": len(runs), "done": len(done)}
        if self.language:
            ok = done.gen_at_end >= GEN_SUCCESS if len(done) else pd.Series(dtype=bool)
            row.update(
                {
                    "success_fraction": ok.mean() if len(done) else math.nan,
                    "n_success": int(ok.sum()),
                    "gen_at_end_mean": _mean(done, "gen_at_end"),
                    "gen_at_end_std": _std(done, "gen_at_end"),
                    "gen_at_max_val_mean": _mean(done, "gen_at_max_val"),
                    "gen_at_patience_stop_mean": _mean(done, "gen_at_patience_stop"),
                    "max_gen_mean": _mean(done, "max_gen"),
                    "step_at_max_val_mean": _mean(done, "step_at_max_val"),
                    "step_at_patience_stop_mean": _mean(done, "step_at_patience_stop"),
                    "analysed": int(done[f"{FINAL_MEASURES[0]}_final"].notna().sum()) if f"{FINAL_MEASURES[0]}_final" in done else 0,
                }
            )
            row.update({f"{c}_final_mean": _mean(done, f"{c}_final") for c in FINAL_MEASURES})
        else:
            steps = done.step_test_acc_99.dropna() if "step_test_acc_99" in done else pd.Series(dtype=float)
            row.update(
                {
                    "grokked": len(steps),
                    "step_test_acc_99_mean": steps.mean() if len(steps) else math.nan,
                    "step_test_acc_99_min": steps.min() if len(steps) else math.nan,
                    "step_test_acc_99_max": steps.max() if len(steps) else math.nan,
                    "final_test_acc_mean": _mean(done, "final_test_acc"),
                }
            )
            if "frac_train" in self.keys:
                row["paper_epochs"] = _paper_epochs(first["frac_train"])
        return row


def _product(grid: dict[str, list]) -> list[tuple]:
    combos: list[tuple] = [()]
    for values in grid.values():
        combos = [c + (v,) for c in combos for v in values]
    return combos


def setting_label(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "all runs"


def _mean(frame: pd.DataFrame, col: str) -> float:
    return float(frame[col].mean()) if col in frame and frame[col].notna().any() else math.nan


def _std(frame: pd.DataFrame, col: str) -> float:
    return float(frame[col].std()) if col in frame and frame[col].notna().sum() > 1 else math.nan


def _paper_epochs(frac: float) -> float:
    return next((float(v) for k, v in PAPER_EPOCHS_BY_FRAC_TRAIN.items() if abs(k - frac) < 1e-9), math.nan)
