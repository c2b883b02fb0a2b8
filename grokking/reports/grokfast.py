"""Two modular runs side by side (`grokking compare RUN_A RUN_B`): did a gradient filter (Grokfast) make
the same circuit sooner?

Built from the run directories' tables only (metrics.csv, analysis.csv, analysis.json, config.json):
steps to 99% test accuracy, phase boundaries, key frequencies and whether the two runs share them, and
the restricted / excluded loss curves of both runs on one figure, aligned by step and by phase. "By
phase" maps each run's steps piecewise-linearly onto phase time: 0 at step 0, 1 at the end of
memorisation, 2 at the end of circuit formation, 3 at the end of cleanup (and on at cleanup's pace after
it), so that a compressed copy of the same three phases lies on top of the original.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokking.config import RunConfig
from grokking.errors import UserError
from grokking.reports.html import Page, step_slider
from grokking.store import RunDir

BOUNDARIES = ("memorisation_end", "circuit_formation_end", "cleanup_end")
COLOURS = ("#1f77b4", "#d62728")


@dataclass
class Side:
    """One analysed modular run, as the comparison reads it."""

    path: Path
    config: RunConfig
    metrics: pd.DataFrame
    table: pd.DataFrame
    summary: dict
    norms: pd.DataFrame | None  # fourier_norms.csv: W_E and W_L norm per frequency per checkpoint

    @property
    def label(self) -> str:
        tr = self.config.train
        settings = {
            "none": "no filter",
            "ema": f"EMA a={tr.grad_filter_alpha} l={tr.grad_filter_lambda}",
            "ma": f"MA w={tr.grad_filter_window} l={tr.grad_filter_lambda}",
        }[tr.grad_filter]
        return f"{self.path.name} (seed {tr.seed}, {settings})"


def read_side(run_dir: str | os.PathLike[str]) -> Side:
    """The files of one analysed modular run, or a one-line error saying what to run first."""
    run = RunDir(run_dir).require()
    run.require_derived(run.analysis_path, run.analysis_summary_path)
    config = run.read_config()
    if config.task.task != "modular":
        raise UserError(f"{run.path} is a {config.task.task} run; `grokking compare` compares modular runs")
    norms = run.read_table(run.fourier_norms_path) if run.fourier_norms_path.is_file() else None
    return Side(run.path, config, run.read_metrics_table(), run.read_table(run.analysis_path), run.read_json(run.analysis_summary_path), norms)


def first_step_at(metrics: pd.DataFrame, column: str, level: float) -> int | None:
    """The first evaluated step where `column` reaches `level` (None: never)."""
    hits = metrics.step[metrics[column] >= level]
    return int(hits.iloc[0]) if len(hits) else None


def phase_time(steps: np.ndarray, phases: dict) -> np.ndarray:
    """Steps mapped onto phase time (0 start, 1/2/3 at the phase boundaries found), linear in between and
    continued past the last boundary found at the last phase's pace; a run with no boundary keeps NaN."""
    knots = [0] + [phases[b] for b in BOUNDARIES if phases.get(b) is not None]
    knots = [k for i, k in enumerate(knots) if i == 0 or k > knots[i - 1]]  # a zero-length phase cannot be stretched
    if len(knots) < 2:
        return np.full(len(steps), np.nan)
    x, y = np.array(knots, float), np.arange(len(knots), dtype=float)
    out = np.interp(steps, x, y)
    after = steps > x[-1]
    out[after] = y[-1] + (steps[after] - x[-1]) / (x[-1] - x[-2])
    return out


def summary_row(side: Side) -> dict[str, object]:
    """The numbers one run contributes to a comparison (and to docs/results tables)."""
    phases = side.summary.get("phases", {})
    final = side.metrics.iloc[-1]
    return {
        "run": side.label,
        "steps": int(final.step),
        "final test acc": round(float(final.test_acc), 4),
        "train acc >= 99% at": first_step_at(side.metrics, "train_acc", 0.99),
        "test acc >= 50% at": first_step_at(side.metrics, "test_acc", 0.5),
        "test acc >= 99% at": first_step_at(side.metrics, "test_acc", 0.99),
        **{b.replace("_", " "): phases.get(b) for b in BOUNDARIES},
        "key frequencies": sorted(side.summary.get("key_frequencies", [])),
    }


def comparison(a: Side, b: Side) -> dict[str, object]:
    """Both runs' rows, plus the speed-up to 99% test accuracy and the key frequencies they share."""
    rows = [summary_row(a), summary_row(b)]
    keys_a, keys_b = set(rows[0]["key frequencies"]), set(rows[1]["key frequencies"])  # type: ignore[arg-type]
    s_a, s_b = rows[0]["test acc >= 99% at"], rows[1]["test acc >= 99% at"]
    return {
        "rows": rows,
        "speed-up to 99% test acc (A steps / B steps)": round(s_a / s_b, 2) if s_a and s_b else None,
        "key frequencies shared / only A / only B": (sorted(keys_a & keys_b), sorted(keys_a - keys_b), sorted(keys_b - keys_a)),
        "same key frequencies": keys_a == keys_b,
    }


def losses_figure(a: Side, b: Side) -> go.Figure:
    """Restricted and excluded loss of both runs (A solid, B dashed; test / train loss dotted), by step and by phase."""
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "restricted loss (and test loss), by step",
            "excluded loss (and train loss), by step",
            "restricted loss, by phase",
            "excluded loss, by phase",
        ),
    )
    for side, colour, name in ((a, COLOURS[0], "A"), (b, COLOURS[1], "B")):
        t = side.table
        x_phase = phase_time(t.step.to_numpy(float), side.summary.get("phases", {}))
        for col, (measure, reference) in enumerate((("restricted_loss", "test_loss"), ("excluded_loss", "train_loss")), start=1):
            for row, x in ((1, t.step), (2, x_phase)):
                fig.add_scatter(
                    x=x,
                    y=t[measure],
                    name=f"{name}: {measure.replace('_', ' ')}",
                    line_color=colour,
                    legendgroup=f"{name}{measure}",
                    showlegend=row == 1,
                    row=row,
                    col=col,
                )
                fig.add_scatter(
                    x=x,
                    y=t[reference],
                    name=f"{name}: {reference.replace('_', ' ')}",
                    line={"color": colour, "dash": "dot", "width": 1},
                    legendgroup=f"{name}{reference}",
                    showlegend=row == 1,
                    row=row,
                    col=col,
                )
    fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="step", row=1)
    fig.update_xaxes(title_text="phase time (1: memorisation ends, 2: circuit formation ends, 3: cleanup ends)", row=2)
    for col in (1, 2):
        for boundary in (1, 2, 3):
            fig.add_vline(x=boundary, line_width=1, line_dash="dash", line_color="#999", row=2, col=col)
    fig.update_layout(height=800, hovermode="x unified")
    return fig


def accuracy_figure(a: Side, b: Side) -> go.Figure:
    fig = go.Figure()
    for side, colour, name in ((a, COLOURS[0], "A"), (b, COLOURS[1], "B")):
        m = side.metrics
        fig.add_scatter(x=m.step, y=m.test_acc, name=f"{name}: test accuracy", line_color=colour)
        fig.add_scatter(x=m.step, y=m.train_acc, name=f"{name}: train accuracy", line={"color": colour, "dash": "dot"})
    fig.update_layout(height=380, xaxis_title="step", yaxis_title="accuracy", hovermode="x unified")
    return fig


def norms_figure(a: Side, b: Side, matrix: str = "W_L", max_steps: int = 40) -> go.Figure:
    """`matrix`'s norm per frequency in A and in B at the same step, with a slider over the steps both runs checkpointed."""
    if a.norms is None or b.norms is None:
        raise UserError("both runs need fourier_norms.csv; run `grokking analyze` on them")
    common = sorted(set(a.norms.step) & set(b.norms.step))
    if not common:
        raise UserError(f"{a.path} and {b.path} have no checkpoint step in common")
    steps = [common[i] for i in np.unique(np.linspace(0, len(common) - 1, min(max_steps, len(common))).round().astype(int))]
    fig = make_subplots(rows=1, cols=2, subplot_titles=(f"A: {matrix} norm per frequency", f"B: {matrix} norm per frequency"))
    for i, step in enumerate(steps):
        for col, (side, colour) in enumerate(((a, COLOURS[0]), (b, COLOURS[1])), start=1):
            norms = side.norms
            assert norms is not None
            at = norms[(norms.step == step) & (norms.matrix == matrix)]
            fig.add_bar(x=at.k, y=at.norm, marker_color=colour, visible=i == len(steps) - 1, showlegend=False, row=1, col=col)
    fig.update_xaxes(title_text="frequency k (0 = constant)")
    fig.update_layout(height=450, sliders=step_slider(steps, 2))
    return fig


def write_comparison(run_a: str | Path, run_b: str | Path, out: str | Path) -> Path:
    """Write the comparison page of A (say, unfiltered) and B (say, filtered) to `out`."""
    a, b = read_side(run_a), read_side(run_b)
    if (a.config.task.p, a.config.task.frac_train) != (b.config.task.p, b.config.task.frac_train):
        raise UserError(f"{a.path} and {b.path} train on different data (p or frac_train differ); compare runs of one task")
    result = comparison(a, b)
    page = Page(f"Grokfast comparison: {a.label} vs {b.label}")
    page.section("Summary", "A is the first run given, B the second. Steps are the evaluation steps at which a level is first reached.")
    rows = result["rows"]
    page.table({key: f"A: {rows[0][key]}   |   B: {rows[1][key]}" for key in rows[0]})  # type: ignore[index]
    page.table({k: v for k, v in result.items() if k != "rows"})
    page.section("Accuracy").figure(accuracy_figure(a, b))
    page.section(
        "Restricted and excluded loss",
        "Top: by step. Bottom: by phase time, each run's own boundaries at 1, 2, 3; a filter "
        "that only compresses the same three phases makes the two runs' bottom curves lie on each other.",
    )
    page.figure(losses_figure(a, b))
    if a.norms is not None and b.norms is not None:
        page.section(
            "Fourier norms at the same step",
            "W_L = W_out W_U, norm per frequency: drag the slider; the key frequencies stand out as the circuit forms.",
        ).figure(norms_figure(a, b))
    path = Path(out)
    page.write(path)
    return path
