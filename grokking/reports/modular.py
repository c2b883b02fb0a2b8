"""The modular-addition report: `grokking report RUN_DIR` -> RUN_DIR/report.html.

Built only from files that `grokking train` and `grokking analyze` wrote (metrics.csv,
analysis.csv, fourier_norms.csv, analysis.json, analysis_maps.safetensors); it imports no training
code, so every number on the page can be traced back to the run directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from safetensors.numpy import load_file

from grokking.reports.html import Page, shade_phases, step_slider
from grokking.reports.llc import add_llc_section
from grokking.store import RunDir


def loss_figure(table: pd.DataFrame, phases: dict) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss (log scale)", "accuracy"))
    for col, colour in (("train", "#1f77b4"), ("test", "#d62728")):
        fig.add_scatter(x=table.step, y=table[f"{col}_loss"], name=f"{col} loss", line_color=colour, row=1, col=1)
        fig.add_scatter(x=table.step, y=table[f"{col}_acc"], name=f"{col} accuracy", line=dict(color=colour, dash="dot"), row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="step")
    shade_phases(fig, phases, [(1, 1), (1, 2)])
    fig.update_layout(height=420, hovermode="x unified")
    return fig


def progress_figure(table: pd.DataFrame, phases: dict) -> go.Figure:
    """The paper's four panels: excluded loss, restricted loss, test/restricted ratio, total squared weights."""
    titles = ("excluded loss (train) vs train loss", "restricted loss vs test loss", "test loss / restricted loss", "total squared weights")
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles)
    fig.add_scatter(x=table.step, y=table.excluded_loss, name="excluded loss", row=1, col=1)
    fig.add_scatter(x=table.step, y=table.train_loss, name="train loss", line_dash="dot", row=1, col=1)
    fig.add_scatter(x=table.step, y=table.restricted_loss, name="restricted loss", row=1, col=2)
    fig.add_scatter(x=table.step, y=table.test_loss, name="test loss", line_dash="dot", row=1, col=2)
    fig.add_scatter(x=table.step, y=table.test_loss / table.restricted_loss, name="test / restricted", row=2, col=1)
    fig.add_scatter(x=table.step, y=table.total_sq_weight_norm, name="total squared weights", row=2, col=2)
    for row, col in ((1, 1), (1, 2), (2, 1)):
        fig.update_yaxes(type="log", row=row, col=col)
    fig.update_xaxes(title_text="step")
    shade_phases(fig, phases, [(1, 1), (1, 2), (2, 1), (2, 2)])
    fig.update_layout(height=700, hovermode="x unified")
    return fig


def fourier_norms_figure(norms: pd.DataFrame, max_steps: int = 60) -> go.Figure:
    """W_E and W_L norms per frequency, with a step slider (the circuit sharpens into a few bars)."""
    all_steps = sorted(norms.step.unique())
    steps = [all_steps[i] for i in np.unique(np.linspace(0, len(all_steps) - 1, min(max_steps, len(all_steps))).round().astype(int))]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("W_E: norm per frequency", "W_L = W_out W_U: norm per frequency"))
    last = len(steps) - 1
    for i, step in enumerate(steps):
        at = norms[norms.step == step]
        for col, matrix in ((1, "W_E"), (2, "W_L")):
            m = at[at.matrix == matrix]
            fig.add_bar(
                x=m.k,
                y=m.norm,
                name=f"{matrix}",
                visible=i == last,
                showlegend=False,
                row=1,
                col=col,
                marker_color="#1f77b4" if matrix == "W_E" else "#ff7f0e",
            )
    fig.update_xaxes(title_text="frequency k (0 = constant)")
    fig.update_layout(height=450, sliders=step_slider(steps, 2))
    return fig


def cluster_figure(summary: dict) -> go.Figure:
    sizes = summary.get("neuron_cluster_sizes", {})
    labels = ["unclustered" if k == "-1" else f"k={k}" for k in sizes]
    fig = go.Figure(go.Bar(x=labels, y=list(sizes.values())))
    fig.update_layout(title="MLP neurons by the frequency that explains them (final checkpoint)", height=380, yaxis_title="neurons")
    return fig


def maps_figure(maps: dict[str, np.ndarray], key: str, labels: list[str], title: str) -> go.Figure:
    """Heat-maps over (a, b) for each head/neuron, with a step slider."""
    grids = maps[key].astype(np.float32)  # [step, item, a, b]
    steps = maps["steps"].tolist()
    n_items = grids.shape[1]
    fig = make_subplots(rows=1, cols=n_items, subplot_titles=labels, horizontal_spacing=0.03)
    last = len(steps) - 1
    for i in range(len(steps)):
        for j in range(n_items):
            fig.add_heatmap(z=np.round(grids[i, j], 3), visible=i == last, showscale=j == n_items - 1, coloraxis="coloraxis", row=1, col=j + 1)
    fig.update_xaxes(title_text="b")
    fig.update_yaxes(title_text="a", row=1, col=1)
    fig.update_layout(title=title, height=380, sliders=step_slider(steps, n_items), coloraxis={"colorscale": "RdBu_r"})
    return fig


def cos_coefficient_figure(table: pd.DataFrame, phases: dict, operation: str = "add") -> go.Figure:
    s = "a-b" if operation == "subtract" else "a+b"
    fig = go.Figure()
    for col in sorted(c for c in table.columns if c.startswith("cos_coef_k")):
        fig.add_scatter(x=table.step, y=table[col], name=f"w = {col.removeprefix('cos_coef_k')}")
    shade_phases(fig, phases)
    fig.update_layout(title=f"coefficient of cos(w({s}-c)) in the logits, per key frequency", xaxis_title="step", height=400)
    return fig


def _read(run: RunDir) -> tuple[pd.DataFrame, pd.DataFrame | None, dict, dict[str, np.ndarray]]:
    """The analysis files; fourier_norms.csv is None for an operation whose Fourier measures do not apply."""
    run.require_derived(run.analysis_path, run.analysis_summary_path, run.analysis_maps_path)
    summary = run.read_json(run.analysis_summary_path)
    applicable = summary.get("fourier_applicable", True)
    norms = run.read_table(run.fourier_norms_path) if applicable else None
    columns = ANALYSIS_COLUMNS + (FOURIER_COLUMNS if applicable else [])
    return run.read_table(run.analysis_path, columns), norms, summary, load_file(str(run.analysis_maps_path))


ANALYSIS_COLUMNS = ["step", "train_loss", "test_loss", "train_acc", "test_acc"]
FOURIER_COLUMNS = ["restricted_loss", "excluded_loss", "gini_W_E", "gini_W_L", "total_sq_weight_norm"]


def _key_frequency_text(summary: dict) -> str:
    """Key frequencies with the rule that chose each, and whether they explain the final logits."""
    rules = summary.get("key_frequency_rules")
    if rules is None:  # analysed before the check existed
        return str(summary["key_frequencies"])
    check = summary["key_frequency_check"]
    chosen = ", ".join(f"{k} ({rule})" for k, rule in rules.items()) or "none"
    if not check.get("generalises", True):
        return f"{chosen}; the final model does not beat chance on the test set, so there is no circuit to check them against"
    verdict = "explain" if check["explained"] else "do NOT explain"
    return (
        f"{chosen}; they {verdict} the final logits: restricted loss {check['restricted_loss']:.3g} vs test loss "
        f"{check['test_loss']:.3g} (target: within {check['factor']:g}x)"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html and return its path."""
    run = RunDir(run_dir).require()
    config = run.read_config()
    table, norms, summary, maps = _read(run)
    phases = summary["phases"]
    final = table.iloc[-1]
    page = Page(f"Grokking report: {config.preset or run.path.name} (p={config.task.p}, seed {config.train.seed})")
    applicable = summary.get("fourier_applicable", True)
    fourier_rows = (
        {
            "key frequencies (rule per key)": _key_frequency_text(summary),
            "key frequencies (W_E norms >= half the largest)": summary.get("key_frequencies_from_embedding"),
        }
        if applicable
        else {"Fourier measures": summary.get("fourier_note")}
    )
    page.section("Summary").table(
        {
            "run directory": str(run.path.resolve()),
            "operation": config.task.operation,
            "checkpoints analysed": len(table),
            "final step": int(final.step),
            "final train / test accuracy": f"{final.train_acc:.2%} / {final.test_acc:.2%}",
            "final train / test loss": f"{final.train_loss:.3g} / {final.test_loss:.3g}",
            **fourier_rows,
            "phase boundaries": f"memorisation ends {phases['memorisation_end']}, circuit formation ends "
            f"{phases['circuit_formation_end']}, cleanup ends {phases['cleanup_end']}",
            "skipped checkpoints": ", ".join(summary.get("skipped", {})) or "none",
        }
    )
    page.section("Loss and accuracy", "Shaded: the phases found by grokking.analysis.phases (rule in its docstring).").figure(
        loss_figure(table, phases)
    )
    if not applicable:
        page.section("Fourier measures: not applicable", summary.get("fourier_note"))
        page.write(run.report_path)
        return run.report_path
    page.section(
        "Progress measures",
        "Restricted loss keeps only the key-frequency components of the logits; excluded loss removes them "
        "and is measured on the training data. Restricted loss falls, and excluded loss rises, before the test loss drops.",
    )
    page.figure(progress_figure(table, phases))
    page.section("Fourier norms of W_E and W_L", "Drag the slider through training: the norms concentrate on the key frequencies.").figure(
        fourier_norms_figure(norms)
    )
    page.section("Neuron clusters").figure(cluster_figure(summary))
    page.section(
        "Attention and neuron activations over (a, b)",
        "Attention from '=' to the first operand per head, and one neuron per key frequency; the slider moves through training.",
    )
    page.figure(maps_figure(maps, "attention_to_a", [f"head {h}" for h in range(maps["attention_to_a"].shape[1])], "attention '=' -> a"))
    page.figure(maps_figure(maps, "neuron_acts", [f"neuron {n}" for n in maps["neurons"].tolist()], "neuron activations"))
    page.section("Logit structure").figure(cos_coefficient_figure(table, phases, config.task.operation))
    add_llc_section(page, run)
    page.write(run.report_path)
    return run.report_path
