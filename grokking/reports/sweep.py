"""The sweep report: `grokking report-sweep SWEEP_DIR` -> report.html, summary.csv and runs.csv.

Draws the tables of `grokking.analysis.sweep.SweepTables` (one row per run, one per setting; see there
for what they hold); no training code and no table computation here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from grokking.analysis.early_stopping import GEN_SUCCESS
from grokking.analysis.sweep import FINAL_MEASURES, GROK_THRESHOLD, PAPER_EPOCHS_BY_FRAC_TRAIN, SweepTables
from grokking.experiments.sweep import REPORT_FILE, RUNS_FILE, SUMMARY_FILE, load_sweep
from grokking.reports.html import Page
from grokking.store import write_csv

BARGAP = 0.2
PALETTE = qualitative.Plotly + qualitative.D3


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# -- language figures -----------------------------------------------------------------------------
def success_figure(t: SweepTables) -> go.Figure:
    s = t.summary
    fig = go.Figure(
        go.Bar(
            x=t.setting_x(),
            y=s.success_fraction,
            text=[f"{k}/{n}" for k, n in zip(s.n_success, s.done)],
            textposition="outside",
            marker_color="#2ca02c",
        )
    )
    fig.update_layout(
        title=f"fraction of seeds with final gen accuracy >= {GEN_SUCCESS:.0%}",
        xaxis_title=" / ".join(t.keys),
        yaxis_title="fraction of finished seeds",
        yaxis_range=[0, 1.1],
        height=420,
    )
    return fig


def early_vs_final_figure(t: SweepTables) -> go.Figure:
    s, x = t.summary, t.setting_x()
    fig = go.Figure()
    fig.add_bar(x=x, y=s.gen_at_end_mean, name="end of training (mean, ±std)", error_y={"type": "data", "array": s.gen_at_end_std})
    fig.add_bar(x=x, y=s.gen_at_max_val_mean, name="early stop at first max val (mean)")
    fig.add_bar(x=x, y=s.gen_at_patience_stop_mean, name=f"early stop, patience {t.patience} (mean)")
    done = t.runs[t.runs.status == "done"]
    if "gen_at_end" in done:
        # Over the first bar of each group: three bars share (1 - bargap) of the spacing between settings.
        numeric = all(isinstance(v, (int, float)) for v in x)
        spacing = min((b - a for a, b in zip(sorted(x), sorted(x)[1:])), default=1) if numeric else 1
        shift = -(1 - BARGAP) * spacing / 3
        seeds_x = [x[t.settings.index(label)] + shift if numeric else x[t.settings.index(label)] for label in done.setting]
        fig.add_scatter(
            x=seeds_x,
            y=done.gen_at_end,
            mode="markers",
            name="end of training, each seed",
            marker={"color": "black", "size": 6},
            text=done.name,
            hovertemplate="%{text}: %{y:.1%}<extra></extra>",
        )
    fig.update_layout(
        title="gen accuracy: extended training vs early stopping on validation accuracy",
        barmode="group",
        bargap=BARGAP,
        xaxis_title=" / ".join(t.keys),
        yaxis_title="gen accuracy",
        yaxis_range=[0, 1.05],
        height=460,
    )
    return fig


def _add_run_curves(fig: go.Figure, t: SweepTables, column: str, label: str, opacity: float | None = None) -> list[tuple[pd.Series, str]]:
    """One line of `column` over steps per run with metrics, coloured and legend-grouped by setting;
    returns each plotted run's row and colour, for marks on top."""
    plotted, shown = [], set()
    for _, row in t.runs.iterrows():
        m = t.metrics.get(row["name"])
        if m is None:
            continue
        colour = _colour(t.settings.index(row.setting))
        fig.add_scatter(
            x=m.step,
            y=m[column],
            mode="lines",
            name=row.setting,
            legendgroup=row.setting,
            showlegend=row.setting not in shown,
            line={"color": colour, "width": 1.5},
            opacity=opacity,
            hovertemplate=f"{row['name']}<br>step %{{x}}: {label} %{{y:.1%}}<extra></extra>",
        )
        shown.add(row.setting)
        plotted.append((row, colour))
    return plotted


def gen_curves_figure(t: SweepTables) -> go.Figure:
    fig = go.Figure()
    for row, colour in _add_run_curves(fig, t, "gen_acc", "gen", opacity=0.8):
        for step, gen, symbol, what in (
            (row.step_at_max_val, row.gen_at_max_val, "x", "first max val"),
            (row.step_at_patience_stop, row.gen_at_patience_stop, "diamond", f"patience {t.patience}"),
        ):
            fig.add_scatter(
                x=[step],
                y=[gen],
                mode="markers",
                marker={"symbol": symbol, "size": 10, "color": colour},
                legendgroup=row.setting,
                showlegend=False,
                hovertemplate=f"{row['name']}: early stop ({what}) at step %{{x}}, gen %{{y:.1%}}<extra></extra>",
            )
    fig.update_layout(
        title=f"gen accuracy over training, every run (x: early stop at first max val; diamond: patience {t.patience})",
        xaxis_title="step",
        yaxis_title="gen accuracy",
        yaxis_range=[0, 1.02],
        height=520,
    )
    return fig


def measures_figure(t: SweepTables) -> go.Figure:
    """Final tree-structuredness, weight norm and attention sparsity per setting, next to the success fraction."""
    titles = ["success fraction", "final tscore", "final weight norm", "final attention sparsity"]
    fig = make_subplots(rows=1, cols=4, subplot_titles=titles)
    x = t.setting_x()
    fig.add_bar(x=x, y=t.summary.success_fraction, marker_color="#2ca02c", showlegend=False, row=1, col=1)
    done = t.runs[t.runs.status == "done"]
    for i, col in enumerate(FINAL_MEASURES, start=2):
        fig.add_bar(x=x, y=t.summary[f"{col}_final_mean"], marker_color="#1f77b4", showlegend=False, row=1, col=i)
        if f"{col}_final" in done:
            fig.add_scatter(
                x=[x[t.settings.index(s)] for s in done.setting],
                y=done[f"{col}_final"],
                mode="markers",
                marker={"color": "black", "size": 5},
                showlegend=False,
                text=done.name,
                row=1,
                col=i,
            )
    fig.update_layout(height=380, title="what predicts the winner? (bars: mean over analysed seeds; dots: seeds)")
    return fig


# -- modular figures ------------------------------------------------------------------------------
def grok_step_figure(t: SweepTables) -> go.Figure:
    fig = go.Figure()
    x = t.setting_x()
    done = t.runs[t.runs.status == "done"]
    done = done[done.step_test_acc_99.notna()] if "step_test_acc_99" in done else done.iloc[:0].assign(step_test_acc_99=[])
    fig.add_scatter(
        x=[x[t.settings.index(s)] for s in done.setting],
        y=done.step_test_acc_99,
        mode="markers",
        name="each seed",
        marker={"size": 8},
        text=done.name,
        hovertemplate="%{text}: step %{y}<extra></extra>",
    )
    fig.add_scatter(x=x, y=t.summary.step_test_acc_99_mean, mode="lines+markers", name="mean over seeds that grokked")
    if t.keys == ["frac_train"]:
        fig.add_scatter(
            x=list(PAPER_EPOCHS_BY_FRAC_TRAIN),
            y=list(PAPER_EPOCHS_BY_FRAC_TRAIN.values()),
            mode="lines+markers",
            name="Nanda et al. released sweep (epochs to their stopping rule)",
            line={"dash": "dash", "color": "grey"},
        )
    fig.update_layout(
        title=f"step at which test accuracy first reaches {GROK_THRESHOLD:.0%}",
        xaxis_title=" / ".join(t.keys),
        yaxis_title="step",
        yaxis_type="log",
        height=460,
    )
    return fig


def test_curves_figure(t: SweepTables) -> go.Figure:
    fig = go.Figure()
    _add_run_curves(fig, t, "test_acc", "test")
    fig.update_layout(
        title="test accuracy over training, every run", xaxis_title="step", yaxis_title="test accuracy", yaxis_range=[0, 1.02], height=480
    )
    return fig


# -- the page -------------------------------------------------------------------------------------
def frame_html(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table in the page's style (numbers rounded for reading; the CSVs keep them whole)."""
    return frame.astype(object).map(_cell).to_html(index=False, classes="summary", border=0, escape=True)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_sweep_report(sweep_dir: str | os.PathLike[str], patience: int = 5) -> Path:
    """SWEEP_DIR/report.html, summary.csv (one row per setting) and runs.csv (one row per run)."""
    sweep = load_sweep(sweep_dir)
    t = SweepTables(sweep, patience)
    write_csv(sweep.path / SUMMARY_FILE, t.summary)
    write_csv(sweep.path / RUNS_FILE, t.runs)
    counts = sweep.counts()
    page = Page(f"Sweep report: {sweep.preset} over {' x '.join(t.keys) or 'seeds'} ({sweep.path.name})")
    page.section("Sweep").table(
        {
            "sweep directory": str(sweep.path.resolve()),
            "preset": sweep.preset,
            "grid": "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in sweep.grid.items()) or "-",
            "seeds": ", ".join(map(str, sweep.seeds)),
            "--set": " ".join(f"{k}={v}" for k, v in sweep.spec.set.items()) or "-",
            "steps": sweep.spec.steps or "preset's",
            "runs": ", ".join(f"{n} {s}" for s, n in counts.items() if n),
        }
    )
    failed = t.runs[t.runs.status == "failed"]
    if len(failed):
        page.section("Failed runs", "Re-run the same `grokking sweep` command to retry them.")
        page.parts.append(frame_html(failed[["name", "attempts", "error"]]))
    (_language_sections if t.language else _modular_sections)(page, t)
    if not t.metrics:
        page.section("No metrics yet", "No run has written metrics.csv yet; re-run report-sweep once some have trained.")
    out = sweep.path / REPORT_FILE
    page.write(out)
    return out


def _language_sections(page: Page, t: SweepTables) -> None:
    page.section(
        f"Who generalises: final gen accuracy >= {GEN_SUCCESS:.0%}",
        "Murty et al. 2023: the fraction of seeds that grok is an inverted U over depth (best QF 6 layers, "
        "9/10 seeds above 80% at 300k steps; TI 4 layers, 8/10). Aggregates cover finished runs only.",
    )
    page.figure(success_figure(t))
    page.section(
        "Early stopping vs extended training",
        f"Gen accuracy where early stopping on in-distribution validation accuracy would have stopped: at the "
        f"first evaluation reaching the run's maximum val accuracy, or once val accuracy had not improved for "
        f"{t.patience} evaluations. The paper: QF-6 early stopping 7.3% gen vs 92.9% after 300k steps.",
    )
    page.figure(early_vs_final_figure(t))
    page.figure(gen_curves_figure(t))
    page.section("Per setting (summary.csv)")
    page.parts.append(frame_html(t.summary))
    if t.summary.analysed.sum():
        page.section(
            "Final progress measures by setting",
            "From each run's analysis.csv (`grokking analyze RUN_DIR`): in the paper weight norm and attention "
            "sparsity grow for every depth, and tscore is what tracks the winner.",
        )
        page.figure(measures_figure(t))
    else:
        page.section(
            "Final progress measures by setting",
            "No run has analysis.csv yet: run `grokking analyze` on the run directories for tscore, weight norm and attention sparsity by setting.",
        )
    page.section("Per run (runs.csv)")
    cols = [
        "name",
        "status",
        "step_at_max_val",
        "gen_at_max_val",
        "step_at_patience_stop",
        "gen_at_patience_stop",
        "gen_at_end",
        "max_gen",
        "first_step_gen_above_80",
        *(f"{c}_final" for c in FINAL_MEASURES),
    ]
    page.parts.append(frame_html(t.runs[[c for c in cols if c in t.runs]]))


def _modular_sections(page: Page, t: SweepTables) -> None:
    note = (
        f"Step at which test accuracy first reaches {GROK_THRESHOLD:.0%}. The grey line is Nanda et al.'s released "
        "training-fraction sweep (epochs, i.e. full-batch steps, until their stopping rule fired): that rule is not "
        f"exactly {GROK_THRESHOLD:.0%} test accuracy, so compare shapes, not exact steps."
    )
    if "weight_decay" in t.keys:
        note += " For weight decay the paper reports: 0.3 groks in ~3k epochs, 1.0 in 5-10k, 3.0 in ~20k, 0 not at all."
    page.section("When does it grok?", note)
    page.figure(grok_step_figure(t))
    page.figure(test_curves_figure(t))
    page.section("Per setting (summary.csv)")
    shown = t.summary.copy()
    shown["step_test_acc_99_mean"] = [
        f"{v:.0f}" if v == v else ("did not grok" if n else "-") for v, n in zip(shown.step_test_acc_99_mean, shown.done)
    ]
    page.parts.append(frame_html(shown))
    page.section("Per run (runs.csv)")
    runs = t.runs.copy()
    if "step_test_acc_99" in runs:
        runs["step_test_acc_99"] = [
            ("did not grok" if s == "done" else "-") if v is None or v != v else f"{v:.0f}" for v, s in zip(runs.step_test_acc_99, runs.status)
        ]
    page.parts.append(frame_html(runs[[c for c in ("name", "status", "final_step", "final_test_acc", "step_test_acc_99", "seconds") if c in runs]]))
