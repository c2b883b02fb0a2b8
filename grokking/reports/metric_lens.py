"""The metric-choice lens on emergence (Schaeffer et al. 2023): `grokking metric-lens PATH`.

The same model outputs, scored by an all-or-nothing metric and by continuous ones, side by side, with
the BIG-Bench emergence score of each. Two axes:

- **scale**: PATH is a sweep directory (`sweep.json` + `runs/<name>/`) over one model-size key (e.g.
  `d_model` or `n_layers`). Each finished run contributes its last metrics.csv row (the final
  checkpoint); seeds are averaged per scale. For digit addition it also shows the mirage paper's third
  prediction, accuracy and edit distance against target length L, where L counts the first L answer
  tokens (`grokking.analysis.metrics.prefix_metrics`: for least-significant-first addition that is
  L-digit addition mod 10^L), and prints the fits: the slope and R^2 of log accuracy against L
  (geometric decay is a straight line there) and of edit distance against L (linear growth).
- **training time**: PATH is a run directory. A modular run must be analysed first: the lens compares
  test accuracy with test log-likelihood (= -test_loss), restricted loss and excluded loss over its
  checkpoints (analysis.csv joined with metrics.csv). A digit-addition run is read from metrics.csv alone.

Sign convention: every emergence score is computed on the metric oriented so that better is up
(`metric_direction`: edit distance, Brier and losses are negated; excluded loss, which rises as the
circuit replaces memorisation, is not). A positive score means "improves along the axis"; its size is
the sharpness, comparable between metrics. A score of about n - 1 is a straight line over n points;
inf means more than half of the steps are flat (a pure step). The median only discounts a single jump
when there are at least 3 steps, so a lens over fewer than 4 scales cannot tell a jump from a line (the
page says so). Conversely, when more than half of the steps are (nearly) flat, at a saturated or plateau
value, the median step is ~0 and every metric scores in the hundreds: over checkpoints this is the rule,
and over scale it happens once most models are perfect. The table therefore also gives where along the
axis each metric covers 10%, 50% and 90% of its rise (`progress_points`), which says *when* it moves.

Writes PATH/metric_lens.html and PATH/metric_lens.csv (one row per metric: its emergence score and
range); a sweep also gets PATH/metric_lens_by_scale.csv (per scale: means and standard deviations
over seeds, and the target-length fits). Built from tables only; no training code is imported.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokking.analysis.metrics import metric_direction, oriented_emergence_score, progress_points
from grokking.errors import UserError
from grokking.reports.html import Page, step_slider
from grokking.store import atomic_write

# The lens's headline metrics, in display order: all-or-nothing first, then the continuous ones.
SCALE_METRICS = ("test_exact_match", "test_per_token_acc", "test_edit_distance", "test_log_likelihood", "test_brier")
MODULAR_TIME_METRICS = ("test_acc", "test_log_likelihood", "restricted_loss", "excluded_loss")
LABELS = {
    "test_exact_match": "exact match", "test_per_token_acc": "per-token accuracy", "test_edit_distance": "token edit distance",
    "test_log_likelihood": "log-likelihood (nats/token)", "test_brier": "Brier score", "test_acc": "test accuracy",
    "restricted_loss": "restricted loss", "excluded_loss": "excluded loss (train)", "test_loss": "test loss",
}
LENGTH_RE = re.compile(r"^test_(exact_match|edit_distance)_L(\d+)$")


def label(metric: str) -> str:
    return LABELS.get(metric, metric.removeprefix("test_").replace("_", " "))


# ---- tables -------------------------------------------------------------------------------------------


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
        rows.append({"metric": metric, "direction": direction, "emergence_score": score,
                     "first": y[0] if y else math.nan, "last": y[-1] if y else math.nan,
                     "min": min(y, default=math.nan), "max": max(y, default=math.nan), "n_points": len(y),
                     "x_10": points[0], "x_50": points[1], "x_90": points[2]})
    return pd.DataFrame(rows)


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares line through (x, y): (slope, R^2); nan with fewer than 3 points, R^2 nan for a flat y."""
    if len(x) < 3:
        return math.nan, math.nan
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(((y - (intercept + slope * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return float(slope), (1 - residual / total) if total > 0 else math.nan


def length_fits(means: pd.DataFrame) -> pd.DataFrame:
    """Per scale: how exact match and edit distance of the length-L prefix depend on L.

    Mirage prediction: accuracy ~ p^L (log accuracy linear in L, slope log p) and edit distance ~ L(1 - p)
    (linear in L). Columns: acc_log_slope and acc_log_r2 (fit of ln accuracy, over the L with accuracy > 0),
    acc_linear_r2 (a straight line in accuracy itself, for comparison), acc_per_token_from_slope
    (exp(slope), the implied per-token p), edit_slope and edit_r2.
    """
    lengths = sorted({int(m.group(2)) for c in means.columns if (m := LENGTH_RE.match(c))})
    rows = []
    for _, row in means.iterrows():
        L = np.array(lengths, dtype=float)
        acc = np.array([row[f"test_exact_match_L{n}"] for n in lengths], dtype=float)
        edit = np.array([row[f"test_edit_distance_L{n}"] for n in lengths], dtype=float)
        positive = acc > 0
        log_slope, log_r2 = _fit(L[positive], np.log(acc[positive]))
        edit_slope, edit_r2 = _fit(L, edit)
        rows.append({"acc_log_slope": log_slope, "acc_log_r2": log_r2, "acc_log_points": int(positive.sum()),
                     "acc_per_token_from_slope": math.exp(log_slope) if not math.isnan(log_slope) else math.nan,
                     "acc_linear_r2": _fit(L, acc)[1], "edit_slope": edit_slope, "edit_r2": edit_r2})
    return pd.DataFrame(rows, index=means.index)


# ---- sweep directories ---------------------------------------------------------------------------------


@dataclass
class Sweep:
    """A sweep's finished runs: `finals` (one row per run: its last metrics row, `run` name, `run_dir` and
    params) and the `history` of every run (all metrics rows), with the scale key the lens puts on its x-axis."""

    path: Path
    axis: str
    finals: pd.DataFrame
    history: pd.DataFrame
    skipped: dict[str, str]
    spec: dict


def read_sweep(path: Path) -> Sweep:
    spec = json.loads((path / "sweep.json").read_text())
    grid = spec.get("grid") or {}
    if len(grid) != 1:
        raise UserError(f"{path}: the metric lens needs a sweep over exactly one scale key, this one varies {sorted(grid) or 'nothing'}")
    axis = next(iter(grid))
    finals, history, skipped = [], [], {}
    for entry in spec.get("runs", []):
        metrics_path = path / entry["dir"] / "metrics.csv"
        if entry.get("status") != "done":
            skipped[entry["name"]] = f"status {entry.get('status')}"
            continue
        if not metrics_path.is_file():
            skipped[entry["name"]] = "no metrics.csv"
            continue
        metrics = pd.read_csv(metrics_path).assign(run=entry["name"], run_dir=str(path / entry["dir"]), **entry["params"])
        history.append(metrics)
        finals.append(metrics.iloc[-1])
    if not finals:
        raise UserError(f"{path}: no finished run in sweep.json yet ({len(skipped)} pending, running or failed)")
    return Sweep(path, axis, pd.DataFrame(finals).reset_index(drop=True), pd.concat(history, ignore_index=True), skipped, spec)


def lens_metrics(columns: list[str] | pd.Index) -> tuple[list[str], list[str]]:
    """The test-split metrics a table holds: (the headline ones to plot, every `test_` column to score).

    Digit-addition runs have the five lens metrics; other runs fall back to test accuracy and test loss.
    """
    headline = [m for m in SCALE_METRICS if m in columns]
    if not headline:
        headline = [m for m in ("test_acc", "test_loss") if m in columns]
    rest = sorted((c for c in columns if c.startswith("test_") and c not in headline and c != "test_acc"),
                  key=lambda c: (bool(LENGTH_RE.match(c)), c))
    return headline, headline + rest


def by_scale(finals: pd.DataFrame, axis: str, metrics: list[str]) -> pd.DataFrame:
    """Per scale value: mean and standard deviation over runs (seeds) of each metric, and the run count."""
    grouped = finals.groupby(axis)[metrics]
    out = grouped.mean().join(grouped.std(ddof=0).add_suffix("_std"))
    out.insert(0, "n_runs", finals.groupby(axis).size())
    return out.sort_index()


def scale_figure(sweep: Sweep, metrics: list[str]) -> go.Figure:
    """Each headline metric against scale (mean +- sd over seeds), with a slider over the training steps
    all runs share: the lens over scale at any point of training (the last step is the final checkpoint)."""
    steps = sorted(set.intersection(*(set(g.step) for _, g in sweep.history.groupby("run"))))
    n = len(metrics)
    cols = min(n, 3)
    fig = make_subplots(rows=math.ceil(n / cols), cols=cols, subplot_titles=[label(m) for m in metrics])
    for i, step in enumerate(steps):
        table = by_scale(sweep.history[sweep.history.step == step], sweep.axis, metrics)
        for j, metric in enumerate(metrics):
            fig.add_scatter(x=table.index, y=table[metric], error_y={"type": "data", "array": table[f"{metric}_std"]},
                            mode="lines+markers", name=label(metric), showlegend=False, visible=i == len(steps) - 1,
                            row=j // cols + 1, col=j % cols + 1)
    fig.update_xaxes(type="log", title_text=sweep.axis)
    fig.update_layout(height=330 * math.ceil(n / cols), sliders=step_slider(steps, n, prefix="training step "))
    return fig


def length_figure(means: pd.DataFrame, axis: str) -> go.Figure:
    """Exact match (log scale) and edit distance of the length-L answer prefix against L, one line per scale."""
    lengths = sorted({int(m.group(2)) for c in means.columns if (m := LENGTH_RE.match(c))})
    fig = make_subplots(rows=1, cols=2, subplot_titles=("exact match of the first L answer tokens (log scale)",
                                                        "edit distance of the first L answer tokens"))
    for scale, row in means.iterrows():
        common = {"legendgroup": str(scale), "mode": "lines+markers", "name": f"{axis}={scale}"}
        fig.add_scatter(x=lengths, y=[row[f"test_exact_match_L{n}"] for n in lengths], row=1, col=1, **common)
        fig.add_scatter(x=lengths, y=[row[f"test_edit_distance_L{n}"] for n in lengths], showlegend=False, row=1, col=2, **common)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="target length L (answer tokens)", dtick=1)
    fig.update_layout(height=420)
    return fig


def _score_rows(scores: pd.DataFrame, axis: str) -> dict[str, str]:
    return {label(r.metric): f"{r.emergence_score:+.3g}   ({r.first:.3g} -> {r.last:.3g}, {'higher' if r.direction > 0 else 'lower'} "
                             f"is better; 10% / 50% / 90% of its rise by {axis} {r.x_10:g} / {r.x_50:g} / {r.x_90:g})"
            for r in scores.itertuples()}


def write_sweep_lens(path: Path) -> Path:
    sweep = read_sweep(path)
    headline, metrics = lens_metrics(sweep.finals.columns)
    if not headline:
        raise UserError(f"{path}: the runs' metrics.csv have no test-split columns to compare")
    means = by_scale(sweep.finals, sweep.axis, metrics)
    scores = score_table(pd.Series(means.index, dtype=float), means.reset_index(drop=True), metrics)
    has_lengths = any(LENGTH_RE.match(m) for m in metrics)
    fits = length_fits(means) if has_lengths else pd.DataFrame(index=means.index)
    page = Page(f"Metric lens over scale: {sweep.spec.get('preset', '')} sweep over {sweep.axis}")
    page.section("Summary").table({
        "sweep directory": str(path.resolve()), "scale key": sweep.axis, "scales": ", ".join(map(str, means.index)),
        "finished runs (per scale)": ", ".join(f"{s}: {int(c)}" for s, c in means.n_runs.items()),
        "skipped runs": ", ".join(f"{k} ({v})" for k, v in sweep.skipped.items()) or "none",
        **({"warning": f"only {len(means)} scales: with fewer than 4 the emergence score's median step includes the "
                       "jump itself, so it cannot tell a jump from a line"} if len(means) < 4 else {}),
    })
    page.section("Emergence score of each metric over scale",
                 "BIG-Bench breakthroughness of the seed-mean final value, on the metric oriented so that better is up "
                 "(edit distance and Brier negated). About n - 1 for a straight line over n scales; large means a jump.")
    page.table(_score_rows(scores[scores.metric.isin(headline)], sweep.axis))
    page.section("The same outputs under each metric",
                 "Final checkpoint by default; the slider replays the comparison at every evaluation step the runs share. "
                 "Error bars: standard deviation over seeds.").figure(scale_figure(sweep, headline))
    if has_lengths:
        page.section("Accuracy and edit distance against target length",
                     "Target length L = the first L answer tokens (least-significant digit first, i.e. L-digit addition mod 10^L). "
                     "Mirage prediction: exact match falls geometrically in L (a straight line on the log axis), edit distance grows linearly.")
        page.figure(length_figure(means, sweep.axis))
        page.table({f"{sweep.axis}={s}": f"ln(exact match) vs L: slope {f.acc_log_slope:+.3f} (p = {f.acc_per_token_from_slope:.3f} per token), "
                                         f"R^2 {f.acc_log_r2:.3f} over {int(f.acc_log_points)} lengths; linear-in-L R^2 {f.acc_linear_r2:.3f} | "
                                         f"edit distance vs L: slope {f.edit_slope:+.3f}, R^2 {f.edit_r2:.3f}"
                    for s, f in fits.iterrows()})
    page.write(path / "metric_lens.html")
    _write_csv(path / "metric_lens.csv", scores.assign(axis=sweep.axis))
    _write_csv(path / "metric_lens_by_scale.csv", means.join(fits).reset_index())
    return path / "metric_lens.html"


# ---- single runs: the lens over training time ------------------------------------------------------------


def time_table(path: Path) -> tuple[pd.DataFrame, list[str], str]:
    """A run's per-step table, the metrics to compare, and a description; a modular run needs analysis.csv."""
    config = json.loads((path / "config.json").read_text())
    metrics = pd.read_csv(path / "metrics.csv") if (path / "metrics.csv").is_file() else None
    if metrics is None or metrics.empty:
        raise UserError(f"{path} has no metrics.csv rows yet; train it first")
    task = config["task"]["task"]
    if task == "modular":
        if not (path / "analysis.csv").is_file():
            raise UserError(f"{path} has no analysis.csv; run `grokking analyze {path}` first")
        analysis = pd.read_csv(path / "analysis.csv")
        table = analysis.merge(metrics[["step", *(c for c in metrics.columns if c not in analysis.columns)]], on="step", how="left")
        table["test_log_likelihood"] = -table["test_loss"]
        return table, list(MODULAR_TIME_METRICS), f"modular run, p={config['task']['p']}, {len(table)} checkpoints (analysis.csv)"
    headline, _ = lens_metrics(metrics.columns)
    if not headline:
        raise UserError(f"{path} ({task}) has no test-split metrics in metrics.csv for the lens")
    return metrics, headline, f"{task} run, {len(metrics)} evaluations (metrics.csv)"


def time_figure(table: pd.DataFrame, metrics: list[str], scores: pd.DataFrame) -> go.Figure:
    """Each metric over training steps in its own panel, titled with its emergence score over time."""
    by_metric = scores.set_index("metric").emergence_score
    cols = 2
    fig = make_subplots(rows=math.ceil(len(metrics) / cols), cols=cols,
                        subplot_titles=[f"{label(m)}: emergence score {by_metric[m]:+.3g}" for m in metrics])
    for j, metric in enumerate(metrics):
        fig.add_scatter(x=table.step, y=table[metric], name=label(metric), mode="lines", row=j // cols + 1, col=j % cols + 1)
        if metric.endswith("loss") and (table[metric] > 0).all():
            fig.update_yaxes(type="log", row=j // cols + 1, col=j % cols + 1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=330 * math.ceil(len(metrics) / cols), showlegend=False, hovermode="x unified")
    return fig


def write_run_lens(path: Path, page_name: str = "metric_lens.html") -> Path:
    """The lens over one run's checkpoints; `grokking report` also uses it as a digit-addition run's report."""
    table, metrics, description = time_table(path)
    scores = score_table(table.step, table, metrics)
    page = Page(f"Metric lens over training time: {path.name}")
    page.section("Summary").table({"run directory": str(path.resolve()), "run": description})
    page.section("Emergence score of each metric over training steps",
                 "BIG-Bench breakthroughness over checkpoints, on the metric oriented so that progress is up (losses negated, "
                 "except excluded loss, which rises as the circuit replaces memorisation). A straight line over n checkpoints "
                 "scores about n - 1. Over training most checkpoints sit on plateaus, so the median step is tiny and a metric "
                 "that flattens early (restricted loss near zero) can score in the thousands: read the score together with "
                 "the steps at which each metric has covered 10%, 50% and 90% of its rise.")
    page.table(_score_rows(scores, "step"))
    page.section("The metrics over training").figure(time_figure(table, metrics, scores))
    page.write(path / page_name)
    _write_csv(path / "metric_lens.csv", scores.assign(axis="step"))
    return path / page_name


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, table.to_csv(index=False).encode())


def write_metric_lens(path: str | Path) -> Path:
    """Write PATH/metric_lens.html (+ csv) for a sweep directory or a run directory; returns the page's path."""
    path = Path(path)
    if (path / "sweep.json").is_file():
        return write_sweep_lens(path)
    if (path / "config.json").is_file():
        return write_run_lens(path)
    raise UserError(f"{path} is neither a sweep directory (no sweep.json) nor a run directory (no config.json)")
