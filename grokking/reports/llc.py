"""Figures of the local learning coefficient, drawn from RUN/llc.csv and the calibration tables only.

- Over training: the LLC (mean +- std over chains) with the detected phases shaded (modular runs), or next
  to generalisation accuracy and tscore (language runs), so a rise or fall can be read against them.
- Calibration: the loss trace of every SGLD chain per (step size, localization), the check the devinterp
  authors recommend: a usable setting levels off within the draws, neither still climbing nor diverging.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokking.reports.html import Page, shade_phases
from grokking.store import RunDir

LLC_NOTE = (
    "Local learning coefficient (devinterp SGLD estimate; mean and std over chains; settings in llc.json). "
    "Higher means a more complex local geometry of the loss around the checkpoint."
)


def llc_figure(llc: pd.DataFrame, others: dict[str, pd.Series], phases: dict | None = None) -> go.Figure:
    """The LLC over steps in the top panel; below it one panel per series in `others` (indexed by step)."""
    rows = 1 + len(others)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=("LLC", *others))
    fig.add_trace(
        go.Scatter(x=llc.step, y=llc.llc_mean, mode="lines+markers", name="LLC", error_y={"type": "data", "array": llc.llc_std, "visible": True}),
        row=1,
        col=1,
    )
    for i, (name, series) in enumerate(others.items(), start=2):
        fig.add_trace(go.Scatter(x=series.index, y=series.values, mode="lines", name=name), row=i, col=1)
        if name.endswith("loss"):
            fig.update_yaxes(type="log", row=i, col=1)
    if phases:
        shade_phases(fig, phases, [(r, 1) for r in range(1, rows + 1)])
    fig.update_xaxes(title_text="step", row=rows, col=1)
    fig.update_layout(height=260 * rows, showlegend=False, margin={"t": 40})
    return fig


def run_llc_figure(run_dir: str | os.PathLike[str]) -> go.Figure | None:
    """The run's LLC figure, with the context its family has; None when the run has no llc.csv."""
    run = RunDir(run_dir)
    if not run.llc_path.is_file():
        return None
    llc = run.read_table(run.llc_path)
    analysis = run.read_table(run.analysis_path).set_index("step") if run.analysis_path.is_file() else pd.DataFrame()
    summary = run.read_json(run.analysis_summary_path) if run.analysis_summary_path.is_file() else {}
    metrics = run.read_metrics_table().set_index("step")
    others = {}
    for name, table, column in (
        ("train loss", analysis, "train_loss"),
        ("test loss", analysis, "test_loss"),
        ("gen accuracy", metrics, "gen_acc"),
        ("tscore", analysis, "tscore"),
    ):
        if column in table and not (name.endswith("loss") and "gen_acc" in metrics):
            others[name] = table[column].dropna()
    return llc_figure(llc, others, summary.get("phases"))


def add_llc_section(page: Page, run_dir: str | os.PathLike[str]) -> None:
    """Append the LLC section to a run's report when `grokking analyze --measures llc` has written llc.csv."""
    fig = run_llc_figure(run_dir)
    if fig is not None:
        page.section("Local learning coefficient", LLC_NOTE).figure(fig)


def calibration_figure(table: pd.DataFrame, traces: pd.DataFrame) -> go.Figure:
    """One panel per (localization row, step size column): every chain's loss trace and the checkpoint's loss."""
    lrs, locs = sorted(table.lr.unique()), sorted(table.localization.unique())
    titles = []
    for loc in locs:
        for lr in lrs:
            row = table[(table.lr == lr) & (table.localization == loc)].iloc[0]
            titles.append(f"lr {lr:g}, γ {loc:g}: LLC {row.llc_mean:.3g} ± {row.llc_std:.2g}")
    fig = make_subplots(rows=len(locs), cols=len(lrs), subplot_titles=titles, vertical_spacing=0.12 / max(1, len(locs) - 1) if len(locs) > 1 else 0.1)
    for r, loc in enumerate(locs, start=1):
        for c, lr in enumerate(lrs, start=1):
            cell = traces[(traces.lr == lr) & (traces.localization == loc)]
            for chain, chain_trace in cell.groupby("chain"):
                fig.add_trace(
                    go.Scatter(x=chain_trace.sgld_step, y=chain_trace.loss, mode="lines", line={"width": 1}, name=f"chain {chain}", showlegend=False),
                    row=r,
                    col=c,
                )
            init = table[(table.lr == lr) & (table.localization == loc)].init_loss.iloc[0]
            fig.add_hline(y=init, line_dash="dot", line_color="black", row=r, col=c)
    fig.update_annotations(font_size=10)
    fig.update_layout(height=230 * len(locs) + 60, margin={"t": 50})
    return fig


def write_calibration_page(run_dir: str | os.PathLike[str], step: int) -> Path:
    """RUN/llc_calibration.html from llc_calibration.csv and llc_calibration_traces.csv."""
    run = RunDir(run_dir)
    table = run.read_table(run.llc_calibration_path, command="grokking llc-calibrate")
    traces = run.read_table(run.llc_calibration_traces_path, command="grokking llc-calibrate")
    page = Page(f"LLC calibration: {run.path.name}, step {step}")
    page.section(
        "Settings",
        "One LLC estimate per step size (lr, columns) and localization (γ, rows). drift: the rise of the "
        "mean loss over the last quarter of the draws as a fraction of its whole rise (near 0: the chains levelled off).",
    )
    page.table(
        {
            f"lr {r.lr:g}, γ {r.localization:g}": f"LLC {r.llc_mean:.4g} ± {r.llc_std:.2g}, drift {r.drift:.2f}, {r.seconds:.0f} s"
            for r in table.itertuples()
        }
    )
    page.section(
        "Loss trace per chain",
        "Dotted: the checkpoint's own loss. A usable setting rises and levels off; a trace "
        "still climbing at the end has not converged, one that explodes has too large a step.",
    )
    page.figure(calibration_figure(table, traces))
    page.write(run.llc_calibration_page_path)
    return run.llc_calibration_page_path
