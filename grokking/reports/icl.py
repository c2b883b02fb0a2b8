"""The report of an `icl-functions` run, from `analysis.csv`, `analysis.json` and `icl_curves.csv` only.

Figures: error vs number of in-context examples per family (model next to the baselines), error vs a on
the convex combinations, error vs sinusoid frequency, and over training the errors and the family probe.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokking.reports.html import Page
from grokking.store import RunDir

PREDICTORS = ("model", "least squares", "family fit", "3-nearest neighbours", "averaging")
COLOURS = dict(zip(PREDICTORS, ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f")))


def curves_figure(curves: pd.DataFrame, sets: list[str]) -> go.Figure:
    """Error vs k, one panel per evaluation set, every predictor."""
    fig = make_subplots(rows=1, cols=len(sets), subplot_titles=sets, shared_yaxes=True)
    for col, name in enumerate(sets, start=1):
        for predictor in PREDICTORS:
            part = curves[(curves["set"] == name) & (curves["predictor"] == predictor)]
            fig.add_trace(
                go.Scatter(
                    x=part["k"],
                    y=part["error"].clip(lower=1e-6),
                    name=predictor,
                    legendgroup=predictor,
                    showlegend=col == 1,
                    line={"color": COLOURS[predictor]},
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="in-context examples k", row=1, col=col)
    fig.update_yaxes(type="log", title_text="normalised squared error", row=1, col=1)
    fig.update_layout(height=420)
    return fig


def at_last_k(curves: pd.DataFrame, prefix: str, parse) -> pd.DataFrame:
    """Error at the largest k of every set whose name starts with `prefix`, with the set's parameter as `x`."""
    last = curves[curves["k"] == curves["k"].max()]
    last = last[last["set"].str.startswith(prefix)].copy()
    last["x"] = last["set"].map(parse)
    return last.sort_values("x")


def sweep_figure(last: pd.DataFrame, x_title: str, shade: tuple[float, float] | None = None) -> go.Figure:
    fig = go.Figure()
    for predictor in PREDICTORS:
        part = last[last["predictor"] == predictor]
        fig.add_trace(
            go.Scatter(x=part["x"], y=part["error"].clip(lower=1e-6), name=predictor, mode="lines+markers", line={"color": COLOURS[predictor]})
        )
    if shade:
        fig.add_vrect(x0=shade[0], x1=shade[1], fillcolor="#2ca02c", opacity=0.1, line_width=0, annotation_text="training range")
    fig.update_layout(xaxis_title=x_title, yaxis_title="normalised squared error at the last k", yaxis_type="log", height=400)
    return fig


def training_figure(table: pd.DataFrame) -> go.Figure:
    """Per-set mean error (over k) and probe accuracy per layer, over checkpoints."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("error (mean over k) over training", "family probe at the last x position"))
    for col in table.columns:
        if col.startswith("err "):
            fig.add_trace(go.Scatter(x=table["step"], y=table[col], name=col[4:], mode="lines"), row=1, col=1)
        if col.startswith("probe "):
            fig.add_trace(go.Scatter(x=table["step"], y=table[col], name=f"probe after block {col[7:]}", mode="lines+markers"), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(title_text="held-out accuracy", row=1, col=2)
    fig.update_xaxes(title_text="step")
    fig.update_layout(height=420)
    return fig


def write_icl_report(run_dir: str | os.PathLike[str]) -> Path:
    run = RunDir(run_dir).require()
    config = run.read_config()
    t = config.task
    families = [f.strip() for f in t.families.split(",") if f.strip()]
    curves = run.read_table(run.icl_curves_path)
    table = run.read_table(run.analysis_path)
    summary = run.read_json(run.analysis_summary_path)
    page = Page(f"In-context functions: {run.path.name}")
    page.section("Summary").table(
        {
            "run": f"{config.preset or 'run'}, seed {config.train.seed}, final step {summary['final_step']}",
            "mixture": f"{t.families} (weights {t.family_weights or 'equal'}), d = {t.n_dims}, {t.n_points} points",
            "sinusoid training frequencies": f"[{t.freq_min}, {t.freq_max}]",
            **{f"error at last k, {name}": ", ".join(f"{p} {v:.3g}" for p, v in summary["error_at_last_k"][name].items()) for name in families},
        }
    )
    page.section(
        "Error vs number of in-context examples, families of the mixture",
        "Squared error at each k divided by the mean squared target at that k: the zero predictor scores 1. "
        "Family fit is least squares on the family's basis with its frequency and direction known.",
    )
    page.figure(curves_figure(curves, families))
    scaled = [name for name in curves["set"].unique() if " x" in name]
    if scaled:
        page.section("Inputs scaled beyond the training range").figure(curves_figure(curves, scaled))
    if curves["set"].str.startswith("combination").any():
        page.section(
            "Convex combinations a (w.x) + (1 - a) sin(omega u.x)",
            "a = 1 is the linear family, a = 0 the sinusoid; between them the function is in no family of the mixture.",
        )
        page.figure(sweep_figure(at_last_k(curves, "combination a=", lambda s: float(s.split("=")[1])), "a"))
    if curves["set"].str.startswith("sinusoid f=").any():
        page.section("Sinusoids at fixed frequencies, inside and outside the training range")
        page.figure(sweep_figure(at_last_k(curves, "sinusoid f=", lambda s: float(s.split("=")[1])), "frequency omega", (t.freq_min, t.freq_max)))
    page.section("Over training").figure(training_figure(table))
    page.write(run.report_path)
    return run.report_path
