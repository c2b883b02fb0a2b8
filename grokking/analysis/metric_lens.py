"""The tables of the metric-choice lens on emergence (Schaeffer et al. 2023); reports/metric_lens.py draws them.

The same model outputs, scored by an all-or-nothing metric and by continuous ones, with the BIG-Bench
emergence score of each along an axis:

- **scale**: a sweep directory over one model-size key. Each finished run contributes its metrics.csv
  rows; the last one is the final checkpoint, seeds are averaged per scale (`by_scale`). For digit
  addition, `length_fits` fits the mirage paper's third prediction: accuracy and edit distance against
  target length L (the first L answer tokens, `grokking.analysis.metrics.prefix_metrics`).
- **training time**: one run directory (`time_table`). A family whose lens reads analysis.csv (modular)
  compares test accuracy with test log-likelihood (= -test_loss), restricted and excluded loss over its
  checkpoints; the others are read from metrics.csv alone.

Sign convention: every emergence score is computed on the metric oriented so that better is up
(`metric_direction`). A score of about n - 1 is a straight line over n points; inf means more than half
of the steps are flat. `score_table` therefore also gives where along the axis each metric covers 10%,
50% and 90% of its rise (`progress_points`), which says *when* it moves.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from grokking.analysis.metrics import metric_direction, oriented_emergence_score, progress_points
from grokking.errors import UserError
from grokking.experiments.sweep import Sweep, load_sweep
from grokking.families import family_of
from grokking.store import RunDir

# The lens's headline metrics, in display order: all-or-nothing first, then the continuous ones.
SCALE_METRICS = ("test_exact_match", "test_per_token_acc", "test_edit_distance", "test_log_likelihood", "test_brier")
MODULAR_TIME_METRICS = ("test_acc", "test_log_likelihood", "restricted_loss", "excluded_loss")
LENGTH_RE = re.compile(r"^test_(exact_match|edit_distance)_L(\d+)$")


def score_table(x: pd.Series, table: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per metric: its direction, the oriented emergence score along `x`, its range, and where along
    `x` it covers 10%, 50% and 90% of the way from its first to its best value (`progress_points`)."""
    rows = []
    for metric in metrics:
        values = table[metric].astype(float)
        ok = values.notna().to_numpy()
        xs, y = x[ok].tolist(), values[ok].tolist()
        direction = metric_direction(metric)
        enough = len(y) >= 2
        score = oriented_emergence_score(xs, y, metric) if enough else math.nan
        points = progress_points(xs, [direction * v for v in y]) if enough else [math.nan] * 3
        rows.append(
            {
                "metric": metric,
                "direction": direction,
                "emergence_score": score,
                "first": y[0] if y else math.nan,
                "last": y[-1] if y else math.nan,
                "min": min(y, default=math.nan),
                "max": max(y, default=math.nan),
                "n_points": len(y),
                "x_10": points[0],
                "x_50": points[1],
                "x_90": points[2],
            }
        )
    return pd.DataFrame(rows)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares line through (x, y): (slope, R^2); nan with fewer than 3 points, R^2 nan for a flat y."""
    if len(x) < 3:
        return math.nan, math.nan
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (intercept + slope * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return float(slope), (1 - residual / total) if total > 0 else math.nan


def target_lengths(columns: list[str] | pd.Index) -> list[int]:
    """The target lengths L that have `test_exact_match_L<L>` / `test_edit_distance_L<L>` columns."""
    return sorted({int(m.group(2)) for c in columns if (m := LENGTH_RE.match(c))})


def length_fits(means: pd.DataFrame) -> pd.DataFrame:
    """Per scale: how exact match and edit distance of the length-L prefix depend on L.

    Mirage prediction: accuracy ~ p^L (log accuracy linear in L, slope log p) and edit distance ~ L(1 - p)
    (linear in L). Columns: acc_log_slope and acc_log_r2 (fit of ln accuracy, over the L with accuracy > 0),
    acc_linear_r2 (a straight line in accuracy itself, for comparison), acc_per_token_from_slope
    (exp(slope), the implied per-token p), edit_slope and edit_r2.
    """
    lengths = target_lengths(means.columns)
    rows = []
    for _, row in means.iterrows():
        L = np.array(lengths, dtype=float)
        acc = np.array([row[f"test_exact_match_L{n}"] for n in lengths], dtype=float)
        edit = np.array([row[f"test_edit_distance_L{n}"] for n in lengths], dtype=float)
        positive = acc > 0
        log_slope, log_r2 = _fit(L[positive], np.log(acc[positive]))
        edit_slope, edit_r2 = _fit(L, edit)
        rows.append(
            {
                "acc_log_slope": log_slope,
                "acc_log_r2": log_r2,
                "acc_log_points": int(positive.sum()),
                "acc_per_token_from_slope": math.exp(log_slope) if not math.isnan(log_slope) else math.nan,
                "acc_linear_r2": _fit(L, acc)[1],
                "edit_slope": edit_slope,
                "edit_r2": edit_r2,
            }
        )
    return pd.DataFrame(rows, index=means.index)


def lens_metrics(columns: list[str] | pd.Index) -> tuple[list[str], list[str]]:
    """The test-split metrics a table holds: (the headline ones to plot, every `test_` column to score).

    Digit-addition runs have the five lens metrics; other runs fall back to test accuracy and test loss.
    """
    headline = [m for m in SCALE_METRICS if m in columns]
    if not headline:
        headline = [m for m in ("test_acc", "test_loss") if m in columns]
    rest = sorted(
        (c for c in columns if c.startswith("test_") and c not in headline and c != "test_acc"), key=lambda c: (bool(LENGTH_RE.match(c)), c)
    )
    return headline, headline + rest


def by_scale(finals: pd.DataFrame, axis: str, metrics: list[str]) -> pd.DataFrame:
    """Per scale value: mean and standard deviation over runs (seeds) of each metric, and the run count."""
    grouped = finals.groupby(axis)[metrics]
    out = grouped.mean().join(grouped.std(ddof=0).add_suffix("_std"))
    out.insert(0, "n_runs", finals.groupby(axis).size())
    return out.sort_index()


# ---- over scale: a sweep directory -----------------------------------------------------------------------


@dataclass
class ScaleSweep:
    """A sweep's finished runs over one scale key `axis`: `finals` (one row per run: its last metrics row, `run`
    name, `run_dir` and params), the `history` of every run (all metrics rows), and why other runs are left out."""

    sweep: Sweep
    axis: str
    finals: pd.DataFrame
    history: pd.DataFrame
    skipped: dict[str, str]

    @property
    def path(self) -> Path:
        return self.sweep.path


def read_scale_sweep(path: str | os.PathLike[str]) -> ScaleSweep:
    """The finished runs of a sweep over exactly one scale key, or a one-line error."""
    sweep = load_sweep(path)
    if len(sweep.grid) != 1:
        raise UserError(f"{sweep.path}: the metric lens needs a sweep over exactly one scale key, this one varies {sorted(sweep.grid) or 'nothing'}")
    axis = next(iter(sweep.grid))
    tables = sweep.metrics()
    history, skipped = [], {}
    for run in sweep.runs:
        if run.status != "done":
            skipped[run.name] = f"status {run.status}"
        elif run.name not in tables:
            skipped[run.name] = "no metrics.csv rows"
        else:
            history.append(tables[run.name].assign(run=run.name, run_dir=str(run.dir), **run.params))
    if not history:
        raise UserError(f"{sweep.path}: no finished run in sweep.json yet ({len(skipped)} pending, running or failed)")
    finals = pd.DataFrame([h.iloc[-1] for h in history]).reset_index(drop=True)
    return ScaleSweep(sweep, axis, finals, pd.concat(history, ignore_index=True), skipped)


@dataclass
class ScaleLens:
    """Everything the lens over scale shows: the headline metrics, every scored metric, the per-scale means,
    the emergence scores over scale, and the target-length fits (empty without length columns)."""

    data: ScaleSweep
    headline: list[str]
    metrics: list[str]
    means: pd.DataFrame
    scores: pd.DataFrame
    fits: pd.DataFrame

    @property
    def has_lengths(self) -> bool:
        return bool(target_lengths(self.metrics))


def scale_lens(path: str | os.PathLike[str]) -> ScaleLens:
    data = read_scale_sweep(path)
    headline, metrics = lens_metrics(data.finals.columns)
    if not headline:
        raise UserError(f"{data.path}: the runs' metrics.csv have no test-split columns to compare")
    means = by_scale(data.finals, data.axis, metrics)
    scores = score_table(pd.Series(means.index, dtype=float), means.reset_index(drop=True), metrics)
    fits = length_fits(means) if target_lengths(metrics) else pd.DataFrame(index=means.index)
    return ScaleLens(data, headline, metrics, means, scores, fits)


def history_by_scale(data: ScaleSweep, metrics: list[str]) -> dict[int, pd.DataFrame]:
    """`by_scale` at every evaluation step all runs share: the lens over scale at any point of training."""
    steps = sorted(set.intersection(*(set(g.step) for _, g in data.history.groupby("run"))))
    return {step: by_scale(data.history[data.history.step == step], data.axis, metrics) for step in steps}


# ---- over training time: one run directory ---------------------------------------------------------------


def time_table(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, list[str], str]:
    """A run's per-step table, the metrics to compare, and a description; a modular run needs analysis.csv."""
    run = RunDir(path).require()
    config = run.read_config()
    metrics = run.read_metrics_table()
    if metrics.empty:
        raise UserError(f"{run.path} has no metrics.csv rows yet; train it first")
    task = config.task.task
    if family_of(task).lens_from_analysis:
        analysis = run.read_table(run.analysis_path, ["step"])
        table = analysis.merge(metrics[["step", *(c for c in metrics.columns if c not in analysis.columns)]], on="step", how="left")
        table["test_log_likelihood"] = -table["test_loss"]
        return table, list(MODULAR_TIME_METRICS), f"{task} run, p={config.task.p}, {len(table)} checkpoints (analysis.csv)"
    headline, _ = lens_metrics(metrics.columns)
    if not headline:
        raise UserError(f"{run.path} ({task}) has no test-split metrics in metrics.csv for the lens")
    return metrics, headline, f"{task} run, {len(metrics)} evaluations (metrics.csv)"


@dataclass
class TimeLens:
    """The lens over one run's training: its per-step `table`, the `metrics` compared, and their `scores` over steps."""

    table: pd.DataFrame
    metrics: list[str]
    description: str
    scores: pd.DataFrame


def time_lens(path: str | os.PathLike[str]) -> TimeLens:
    table, metrics, description = time_table(path)
    return TimeLens(table, metrics, description, score_table(table.step, table, metrics))
