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
over seeds, and the target-length fits). The tables come from `grokking.analysis.metric_lens`; this
module only draws them and writes the page.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokking.analysis.metric_lens import ScaleSweep, history_by_scale, scale_lens, target_lengths, time_lens
from grokking.errors import UserError
from grokking.experiments.sweep import METRIC_LENS_BY_SCALE, METRIC_LENS_PAGE, METRIC_LENS_TABLE, STATE_FILE
from grokking.reports.html import Page, step_slider
from grokking.store import RunDir, write_csv

LABELS = {
    "test_exact_match": "exact match",
    "test_per_token_acc": "per-token accuracy",
    "test_edit_distance": "token edit distance",
    "test_log_likelihood": "log-likelihood (nats/token)",
    "test_brier": "Brier score",
    "test_acc": "test accuracy",
    "restricted_loss": "restricted loss",
    "excluded_loss": "excluded loss (train)",
    "test_loss": "test loss",
}


def label(metric: str) -> str:
    return LABELS.get(metric, metric.removeprefix("test_").replace("_", " "))


def scale_figure(sweep: ScaleSweep, metrics: list[str]) -> go.Figure:
    """Each headline metric against scale (mean +- sd over seeds), with a slider over the training steps
    all runs share: the lens over scale at any point of training (the last step is the final checkpoint)."""
    tables = history_by_scale(sweep, metrics)
    steps = list(tables)
    n = len(metrics)
    cols = min(n, 3)
    fig = make_subplots(rows=math.ceil(n / cols), cols=cols, subplot_titles=[label(m) for m in metrics])
    for i, (step, table) in enumerate(tables.items()):
        for j, metric in enumerate(metrics):
            fig.add_scatter(
                x=table.index,
                y=table[metric],
                error_y={"type": "data", "array": table[f"{metric}_std"]},
                mode="lines+markers",
                name=label(metric),
                showlegend=False,
                visible=i == len(steps) - 1,
                row=j // cols + 1,
                col=j % cols + 1,
            )
    fig.update_xaxes(type="log", title_text=sweep.axis)
    fig.update_layout(height=330 * math.ceil(n / cols), sliders=step_slider(steps, n, prefix="training step "))
    return fig


def length_figure(means: pd.DataFrame, axis: str) -> go.Figure:
    """Exact match (log scale) and edit distance of the length-L answer prefix against L, one line per scale."""
    lengths = target_lengths(means.columns)
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("exact match of the first L answer tokens (log scale)", "edit distance of the first L answer tokens")
    )
    for scale, row in means.iterrows():
        common = {"legendgroup": str(scale), "mode": "lines+markers", "name": f"{axis}={scale}"}
        fig.add_scatter(x=lengths, y=[row[f"test_exact_match_L{n}"] for n in lengths], row=1, col=1, **common)
        fig.add_scatter(x=lengths, y=[row[f"test_edit_distance_L{n}"] for n in lengths], showlegend=False, row=1, col=2, **common)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="target length L (answer tokens)", dtick=1)
    fig.update_layout(height=420)
    return fig


def _score_rows(scores: pd.DataFrame, axis: str) -> dict[str, str]:
    return {
        label(r.metric): f"{r.emergence_score:+.3g}   ({r.first:.3g} -> {r.last:.3g}, {'higher' if r.direction > 0 else 'lower'} "
        f"is better; 10% / 50% / 90% of its rise by {axis} {r.x_10:g} / {r.x_50:g} / {r.x_90:g})"
        for r in scores.itertuples()
    }


def write_sweep_lens(path: str | os.PathLike[str]) -> Path:
    lens = scale_lens(path)
    sweep, headline, means, scores, fits = lens.data, lens.headline, lens.means, lens.scores, lens.fits
    path = sweep.path
    page = Page(f"Metric lens over scale: {sweep.sweep.preset} sweep over {sweep.axis}")
    page.section("Summary").table(
        {
            "sweep directory": str(path.resolve()),
            "scale key": sweep.axis,
            "scales": ", ".join(map(str, means.index)),
            "finished runs (per scale)": ", ".join(f"{s}: {int(c)}" for s, c in means.n_runs.items()),
            "skipped runs": ", ".join(f"{k} ({v})" for k, v in sweep.skipped.items()) or "none",
            **(
                {
                    "warning": f"only {len(means)} scales: with fewer than 4 the emergence score's median step includes the "
                    "jump itself, so it cannot tell a jump from a line"
                }
                if len(means) < 4
                else {}
            ),
        }
    )
    page.section(
        "Emergence score of each metric over scale",
        "BIG-Bench breakthroughness of the seed-mean final value, on the metric oriented so that better is up "
        "(edit distance and Brier negated). About n - 1 for a straight line over n scales; large means a jump.",
    )
    page.table(_score_rows(scores[scores.metric.isin(headline)], sweep.axis))
    page.section(
        "The same outputs under each metric",
        "Final checkpoint by default; the slider replays the comparison at every evaluation step the runs share. "
        "Error bars: standard deviation over seeds.",
    ).figure(scale_figure(sweep, headline))
    if lens.has_lengths:
        page.section(
            "Accuracy and edit distance against target length",
            "Target length L = the first L answer tokens (least-significant digit first, i.e. L-digit addition mod 10^L). "
            "Mirage prediction: exact match falls geometrically in L (a straight line on the log axis), edit distance grows linearly.",
        )
        page.figure(length_figure(means, sweep.axis))
        page.table(
            {
                f"{sweep.axis}={s}": f"ln(exact match) vs L: slope {f.acc_log_slope:+.3f} (p = {f.acc_per_token_from_slope:.3f} per token), "
                f"R^2 {f.acc_log_r2:.3f} over {int(f.acc_log_points)} lengths; linear-in-L R^2 {f.acc_linear_r2:.3f} | "
                f"edit distance vs L: slope {f.edit_slope:+.3f}, R^2 {f.edit_r2:.3f}"
                for s, f in fits.iterrows()
            }
        )
    page.write(path / METRIC_LENS_PAGE)
    write_csv(path / METRIC_LENS_TABLE, scores.assign(axis=sweep.axis))
    write_csv(path / METRIC_LENS_BY_SCALE, means.join(fits).reset_index())
    return path / METRIC_LENS_PAGE


# ---- single runs: the lens over training time ------------------------------------------------------------


def time_figure(table: pd.DataFrame, metrics: list[str], scores: pd.DataFrame) -> go.Figure:
    """Each metric over training steps in its own panel, titled with its emergence score over time."""
    by_metric = scores.set_index("metric").emergence_score
    cols = 2
    fig = make_subplots(
        rows=math.ceil(len(metrics) / cols), cols=cols, subplot_titles=[f"{label(m)}: emergence score {by_metric[m]:+.3g}" for m in metrics]
    )
    for j, metric in enumerate(metrics):
        fig.add_scatter(x=table.step, y=table[metric], name=label(metric), mode="lines", row=j // cols + 1, col=j % cols + 1)
        if metric.endswith("loss") and (table[metric] > 0).all():
            fig.update_yaxes(type="log", row=j // cols + 1, col=j % cols + 1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=330 * math.ceil(len(metrics) / cols), showlegend=False, hovermode="x unified")
    return fig


def write_run_lens(path: str | os.PathLike[str], page_name: str = METRIC_LENS_PAGE) -> Path:
    """The lens over one run's checkpoints; `grokking report` also uses it as a digit-addition run's report."""
    run = RunDir(path)
    lens = time_lens(run)
    page = Page(f"Metric lens over training time: {run.path.name}")
    page.section("Summary").table({"run directory": str(run.path.resolve()), "run": lens.description})
    page.section(
        "Emergence score of each metric over training steps",
        "BIG-Bench breakthroughness over checkpoints, on the metric oriented so that progress is up (losses negated, "
        "except excluded loss, which rises as the circuit replaces memorisation). A straight line over n checkpoints "
        "scores about n - 1. Over training most checkpoints sit on plateaus, so the median step is tiny and a metric "
        "that flattens early (restricted loss near zero) can score in the thousands: read the score together with "
        "the steps at which each metric has covered 10%, 50% and 90% of its rise.",
    )
    page.table(_score_rows(lens.scores, "step"))
    page.section("The metrics over training").figure(time_figure(lens.table, lens.metrics, lens.scores))
    page.write(run.path / page_name)
    write_csv(run.metric_lens_path, lens.scores.assign(axis="step"))
    return run.path / page_name


def write_metric_lens(path: str | os.PathLike[str]) -> Path:
    """Write PATH/metric_lens.html (+ csv) for a sweep directory or a run directory; returns the page's path."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return write_sweep_lens(path)
    if RunDir(path).exists():
        return write_run_lens(path)
    raise UserError(f"{path} is neither a sweep directory (no sweep.json) nor a run directory (no config.json)")
