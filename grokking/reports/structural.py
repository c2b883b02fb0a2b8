"""The structural-grokking report for language runs, built from metrics.csv, analysis.csv and
analysis_trees.json only.

Early stopping is recomputed here from metrics.csv (every evaluation, not only the analysed
checkpoints), so the patience is a report flag and needs no re-analysis."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from grokking.analysis.early_stopping import EarlyStopping, early_stopping
from grokking.errors import UserError
from grokking.reports.html import Page, step_slider
from grokking.reports.llc import add_llc_section
from grokking.store import RunDir


def accuracy_figure(metrics: pd.DataFrame, stopping: EarlyStopping | None) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=metrics.step, y=metrics.val_acc, name="in-distribution (val) accuracy")
    fig.add_scatter(x=metrics.step, y=metrics.gen_acc, name="generalisation (gen) accuracy")
    if stopping:
        fig.add_vline(
            x=stopping.step_at_max_val,
            line_dash="dash",
            line_color="grey",
            annotation_text=f"early stop (max val): gen {stopping.gen_at_max_val:.0%}",
        )
        fig.add_vline(
            x=stopping.step_at_patience_stop,
            line_dash="dot",
            line_color="grey",
            annotation_text=f"patience {stopping.patience}: gen {stopping.gen_at_patience_stop:.0%}",
            annotation_position="bottom right",
        )
    fig.update_layout(title="accuracy over training", xaxis_title="step", yaxis_range=[0, 1.02], height=420)
    return fig


def measures_figure(table: pd.DataFrame) -> go.Figure:
    panels = [
        ("weight_norm", "weight norm (L2, all parameters)"),
        ("tscore", "tscore (tree-structuredness)"),
        ("attn_sparsity", "attention sparsity, per head (-entropy per head and token, mean)"),
        ("attn_sparsity_headavg", "attention sparsity, released code (-entropy of head-averaged attention, summed per sentence)"),
        ("tparseval", "tparseval (bracketing F1 vs gold)"),
    ]
    fig = make_subplots(rows=3, cols=2, subplot_titles=[t for _, t in panels])
    for i, (col, _) in enumerate(panels):
        if col in table:
            fig.add_scatter(x=table.step, y=table[col], name=col, row=i // 2 + 1, col=i % 2 + 1)
    for baseline, dash in (("tparseval_right_branching", "dash"), ("tparseval_left_branching", "dot")):
        if baseline in table:
            fig.add_scatter(x=table.step, y=table[baseline], name=baseline.removeprefix("tparseval_"), line_dash=dash, row=3, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_annotations(font_size=11)
    fig.update_layout(height=900)
    return fig


def head_entropy_figure(table: pd.DataFrame) -> go.Figure:
    """Per-head entropy over steps: a global mean hides the heads that become sharp."""
    heads = [c for c in table.columns if c.startswith("attn_entropy_l") and "h" in c.removeprefix("attn_entropy_l")]
    fig = go.Figure()
    for col in heads:
        fig.add_scatter(x=table.step, y=table[col], name=col.removeprefix("attn_entropy_"), mode="lines")
    fig.update_layout(title="attention entropy per head (layer l, head h)", xaxis_title="step", height=420)
    return fig


def sci_figure(trees: dict) -> go.Figure:
    steps = list(trees)
    fig = go.Figure()
    for i, step in enumerate(steps):
        words = trees[step]["words"]
        chart = np.array(trees[step]["chart"], dtype=float)
        chart[np.tril_indices_from(chart, -1)] = np.nan
        fig.add_heatmap(z=chart, x=words, y=words, visible=i == len(steps) - 1, colorscale="Viridis", zmin=0, zmax=1)
    fig.update_layout(
        title="SCI chart: span (start row, end column) contextual invariance",
        height=520,
        yaxis_autorange="reversed",
        sliders=step_slider([int(s) for s in steps], 1),
    )
    return fig


def early_stopping_table(stopping: EarlyStopping) -> dict[str, str]:
    """The early-stopping view against training on, in words a reader can scan."""
    crossed = stopping.first_step_gen_above_80
    return {
        "first max val accuracy (early stop)": f"step {stopping.step_at_max_val}: gen {stopping.gen_at_max_val:.1%}",
        f"patience {stopping.patience} evaluations": f"step {stopping.step_at_patience_stop}: gen {stopping.gen_at_patience_stop:.1%}",
        "end of training": f"step {stopping.final_step}: gen {stopping.gen_at_end:.1%}",
        "maximum gen accuracy": f"{stopping.max_gen:.1%}",
        "gen accuracy first >= 80%": f"step {crossed}" if crossed is not None else "never",
    }


def write_structural_report(run_dir: str | os.PathLike[str], patience: int = 5) -> Path:
    if patience < 1:
        raise UserError(f"--patience must be >= 1 evaluations, got {patience}")
    run = RunDir(run_dir).require()
    run.require_derived(run.analysis_path, run.analysis_summary_path)
    table = run.read_table(run.analysis_path)
    metrics = run.read_metrics_table()
    summary = run.read_json(run.analysis_summary_path)
    config = run.read_config()
    stopping = early_stopping(metrics, patience) if "gen_acc" in metrics else None
    page = Page(
        f"Structural grokking report: {config.preset or run.path.name} ({config.task.task}, {config.model.n_layers} layers, seed {config.train.seed})"
    )
    final = table.iloc[-1]
    page.section("Summary").table(
        {
            "run directory": str(run.path.resolve()),
            "checkpoints analysed": len(table),
            "final step": int(final.step),
            "final val / gen accuracy": f"{final.get('val_acc', float('nan')):.1%} / {final.get('gen_acc', float('nan')):.1%}",
            "analysis sample": f"{summary.get('sample')} random training examples (seed {summary.get('sample_seed', 'n/a')}), "
            f"{summary.get('sample_declaratives', 'n/a')} declaratives projected",
        }
    )
    page.section(
        "Early stopping vs extended training",
        "Where early stopping on in-distribution validation accuracy would have left this run (dashed: first "
        f"maximum; dotted: no new best for {patience} evaluations), against training on.",
    )
    if stopping:
        page.table(early_stopping_table(stopping))
    page.figure(accuracy_figure(metrics, stopping))
    page.section("Weight norm, attention sparsity and tree-structuredness").figure(measures_figure(table)).figure(head_entropy_figure(table))
    if run.analysis_trees_path.is_file():
        trees = run.read_json(run.analysis_trees_path)
        page.section("Tree projection of one sentence", "Induced (greedy, as the paper) and CKY trees next to the gold parse, per step.")
        page.table(
            {
                f"step {s}": f"greedy {t['brackets']['greedy']} | cky {t['brackets']['cky']} | gold {t['brackets']['gold']} "
                f"| tparseval {t['tparseval']['greedy']:.2f}"
                for s, t in trees.items()
            }
        )
        page.figure(sci_figure(trees))
    add_llc_section(page, run)
    page.write(run.report_path)
    return run.report_path
