"""The sweep report: `grokking report-sweep SWEEP_DIR` -> report.html, summary.csv and runs.csv.

Built from sweep.json and the run directories' metrics.csv / analysis.csv only (no training code), so
it can be re-run while the sweep is still going: per-run numbers cover every run with metrics, the
per-setting aggregates only finished ones. A *setting* is one combination of grid values; its rows
aggregate over seeds.

- Language runs (metrics with gen_acc): the structural-grokking questions. Which fraction of seeds
  ends with gen accuracy >= 80% (the paper's inverted U over depth), and what would early stopping on
  validation accuracy have reported instead (first max, and a patience rule).
- Modular runs: the step at which test accuracy first reaches 99%, next to the released numbers of
  Nanda et al. for a training-fraction sweep.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from grokking.analysis.early_stopping import GEN_SUCCESS, early_stopping
from grokking.errors import UserError
from grokking.experiments.sweep import Sweep, load_sweep
from grokking.reports.html import Page
from grokking.store import atomic_write

GROK_THRESHOLD = 0.99
BARGAP = 0.2
# Nanda et al., released frac_train sweep: epochs (= full-batch steps) until their stopping rule fired.
PAPER_EPOCHS_BY_FRAC_TRAIN = {0.95: 970, 0.9: 1057, 0.8: 1339, 0.7: 897, 0.6: 1091, 0.5: 1618, 0.4: 3667,
                              0.3: 8996, 0.28: 16614, 0.25: 23276}
FINAL_MEASURES = ("tscore", "weight_norm", "attn_sparsity")
PALETTE = qualitative.Plotly + qualitative.D3


class SweepTables:
    """A sweep's runs as tables: `runs` (one row per run), `summary` (one row per setting) and the curves."""

    def __init__(self, sweep: Sweep, patience: int = 5):
        if patience < 1:
            raise UserError(f"--patience must be >= 1 evaluations, got {patience}")
        self.sweep, self.patience = sweep, patience
        self.keys = list(sweep.grid)
        self.metrics = {r.name: pd.read_csv(r.dir / "metrics.csv") for r in sweep.runs if _has_rows(r.dir / "metrics.csv")}
        self.language = any("gen_acc" in m for m in self.metrics.values())
        self.settings = [_label(dict(zip(self.keys, combo))) for combo in _product(sweep.grid)]
        self.runs = pd.DataFrame([self._run_row(r) for r in sweep.runs])
        self.summary = pd.DataFrame([self._setting_row(label) for label in self.settings])

    def setting_x(self) -> list:
        """Plot positions of the settings: the grid values for one numeric key, else the labels."""
        values = self.sweep.grid[self.keys[0]] if len(self.keys) == 1 else []
        numeric = values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        return list(values) if numeric else self.settings

    def _run_row(self, run) -> dict:
        row = {"name": run.name, "setting": _label({k: run.params[k] for k in self.keys}), **run.params,
               "status": run.status, "attempts": run.attempts, "seconds": run.seconds}
        m = self.metrics.get(run.name)
        if m is None:
            return row
        row["final_step"] = int(m.step.iloc[-1])
        if self.language:
            row.update(early_stopping(m, self.patience).to_dict())
            analysis = run.dir / "analysis.csv"
            if _has_rows(analysis):
                last = pd.read_csv(analysis).iloc[-1]
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
            row.update({"success_fraction": ok.mean() if len(done) else math.nan, "n_success": int(ok.sum()),
                        "gen_at_end_mean": _mean(done, "gen_at_end"), "gen_at_end_std": _std(done, "gen_at_end"),
                        "gen_at_max_val_mean": _mean(done, "gen_at_max_val"),
                        "gen_at_patience_stop_mean": _mean(done, "gen_at_patience_stop"),
                        "max_gen_mean": _mean(done, "max_gen"), "step_at_max_val_mean": _mean(done, "step_at_max_val"),
                        "step_at_patience_stop_mean": _mean(done, "step_at_patience_stop"),
                        "analysed": int(done[f"{FINAL_MEASURES[0]}_final"].notna().sum()) if f"{FINAL_MEASURES[0]}_final" in done else 0})
            row.update({f"{c}_final_mean": _mean(done, f"{c}_final") for c in FINAL_MEASURES})
        else:
            steps = done.step_test_acc_99.dropna() if "step_test_acc_99" in done else pd.Series(dtype=float)
            row.update({"grokked": len(steps), "step_test_acc_99_mean": steps.mean() if len(steps) else math.nan,
                        "step_test_acc_99_min": steps.min() if len(steps) else math.nan,
                        "step_test_acc_99_max": steps.max() if len(steps) else math.nan,
                        "final_test_acc_mean": _mean(done, "final_test_acc")})
            if "frac_train" in self.keys:
                row["paper_epochs"] = _paper_epochs(first["frac_train"])
        return row


def _has_rows(path: Path) -> bool:
    return path.is_file() and len(path.read_text().strip().splitlines()) > 1


def _product(grid: dict[str, list]) -> list[tuple]:
    combos: list[tuple] = [()]
    for values in grid.values():
        combos = [c + (v,) for c in combos for v in values]
    return combos


def _label(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "all runs"


def _mean(frame: pd.DataFrame, col: str) -> float:
    return float(frame[col].mean()) if col in frame and frame[col].notna().any() else math.nan


def _std(frame: pd.DataFrame, col: str) -> float:
    return float(frame[col].std()) if col in frame and frame[col].notna().sum() > 1 else math.nan


def _paper_epochs(frac: float) -> float:
    return next((float(v) for k, v in PAPER_EPOCHS_BY_FRAC_TRAIN.items() if abs(k - frac) < 1e-9), math.nan)


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


# -- language figures -----------------------------------------------------------------------------
def success_figure(t: SweepTables) -> go.Figure:
    s = t.summary
    fig = go.Figure(go.Bar(x=t.setting_x(), y=s.success_fraction, text=[f"{k}/{n}" for k, n in zip(s.n_success, s.done)],
                           textposition="outside", marker_color="#2ca02c"))
    fig.update_layout(title=f"fraction of seeds with final gen accuracy >= {GEN_SUCCESS:.0%}", xaxis_title=" / ".join(t.keys),
                      yaxis_title="fraction of finished seeds", yaxis_range=[0, 1.1], height=420)
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
        fig.add_scatter(x=seeds_x, y=done.gen_at_end, mode="markers", name="end of training, each seed",
                        marker={"color": "black", "size": 6}, text=done.name, hovertemplate="%{text}: %{y:.1%}<extra></extra>")
    fig.update_layout(title="gen accuracy: extended training vs early stopping on validation accuracy", barmode="group", bargap=BARGAP,
                      xaxis_title=" / ".join(t.keys), yaxis_title="gen accuracy", yaxis_range=[0, 1.05], height=460)
    return fig


def _add_run_curves(fig: go.Figure, t: SweepTables, column: str, label: str,
                    opacity: float | None = None) -> list[tuple[pd.Series, str]]:
    """One line of `column` over steps per run with metrics, coloured and legend-grouped by setting;
    returns each plotted run's row and colour, for marks on top."""
    plotted, shown = [], set()
    for _, row in t.runs.iterrows():
        m = t.metrics.get(row["name"])
        if m is None:
            continue
        colour = _colour(t.settings.index(row.setting))
        fig.add_scatter(x=m.step, y=m[column], mode="lines", name=row.setting, legendgroup=row.setting,
                        showlegend=row.setting not in shown, line={"color": colour, "width": 1.5}, opacity=opacity,
                        hovertemplate=f"{row['name']}<br>step %{{x}}: {label} %{{y:.1%}}<extra></extra>")
        shown.add(row.setting)
        plotted.append((row, colour))
    return plotted


def gen_curves_figure(t: SweepTables) -> go.Figure:
    fig = go.Figure()
    for row, colour in _add_run_curves(fig, t, "gen_acc", "gen", opacity=0.8):
        for step, gen, symbol, what in ((row.step_at_max_val, row.gen_at_max_val, "x", "first max val"),
                                        (row.step_at_patience_stop, row.gen_at_patience_stop, "diamond", f"patience {t.patience}")):
            fig.add_scatter(x=[step], y=[gen], mode="markers", marker={"symbol": symbol, "size": 10, "color": colour},
                            legendgroup=row.setting, showlegend=False,
                            hovertemplate=f"{row['name']}: early stop ({what}) at step %{{x}}, gen %{{y:.1%}}<extra></extra>")
    fig.update_layout(title=f"gen accuracy over training, every run (x: early stop at first max val; diamond: patience {t.patience})",
                      xaxis_title="step", yaxis_title="gen accuracy", yaxis_range=[0, 1.02], height=520)
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
            fig.add_scatter(x=[x[t.settings.index(s)] for s in done.setting], y=done[f"{col}_final"], mode="markers",
                            marker={"color": "black", "size": 5}, showlegend=False, text=done.name, row=1, col=i)
    fig.update_layout(height=380, title="what predicts the winner? (bars: mean over analysed seeds; dots: seeds)")
    return fig


# -- modular figures ------------------------------------------------------------------------------
def grok_step_figure(t: SweepTables) -> go.Figure:
    fig = go.Figure()
    x = t.setting_x()
    done = t.runs[t.runs.status == "done"]
    done = done[done.step_test_acc_99.notna()] if "step_test_acc_99" in done else done.iloc[:0].assign(step_test_acc_99=[])
    fig.add_scatter(x=[x[t.settings.index(s)] for s in done.setting], y=done.step_test_acc_99, mode="markers",
                    name="each seed", marker={"size": 8}, text=done.name, hovertemplate="%{text}: step %{y}<extra></extra>")
    fig.add_scatter(x=x, y=t.summary.step_test_acc_99_mean, mode="lines+markers", name="mean over seeds that grokked")
    if t.keys == ["frac_train"]:
        fig.add_scatter(x=list(PAPER_EPOCHS_BY_FRAC_TRAIN), y=list(PAPER_EPOCHS_BY_FRAC_TRAIN.values()), mode="lines+markers",
                        name="Nanda et al. released sweep (epochs to their stopping rule)", line={"dash": "dash", "color": "grey"})
    fig.update_layout(title=f"step at which test accuracy first reaches {GROK_THRESHOLD:.0%}", xaxis_title=" / ".join(t.keys),
                      yaxis_title="step", yaxis_type="log", height=460)
    return fig


def test_curves_figure(t: SweepTables) -> go.Figure:
    fig = go.Figure()
    _add_run_curves(fig, t, "test_acc", "test")
    fig.update_layout(title="test accuracy over training, every run", xaxis_title="step", yaxis_title="test accuracy",
                      yaxis_range=[0, 1.02], height=480)
    return fig


# -- the page -------------------------------------------------------------------------------------
def frame_html(frame: pd.DataFrame) -> str:
    """A DataFrame as an HTML table in the page's style (numbers rounded for reading; the CSVs keep them whole)."""
    return frame.astype(object).map(_cell).to_html(index=False, classes="summary", border=0, escape=True)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    atomic_write(path, buf.getvalue().encode())


def write_sweep_report(sweep_dir: str | Path, patience: int = 5) -> Path:
    """SWEEP_DIR/report.html, summary.csv (one row per setting) and runs.csv (one row per run)."""
    sweep = load_sweep(sweep_dir)
    t = SweepTables(sweep, patience)
    write_csv(sweep.path / "summary.csv", t.summary)
    write_csv(sweep.path / "runs.csv", t.runs)
    counts = sweep.counts()
    page = Page(f"Sweep report: {sweep.preset} over {' x '.join(t.keys) or 'seeds'} ({sweep.path.name})")
    page.section("Sweep").table({
        "sweep directory": str(sweep.path.resolve()), "preset": sweep.preset,
        "grid": "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in sweep.grid.items()) or "-",
        "seeds": ", ".join(map(str, sweep.seeds)), "--set": " ".join(f"{k}={v}" for k, v in sweep.spec.set.items()) or "-",
        "steps": sweep.spec.steps or "preset's", "runs": ", ".join(f"{n} {s}" for s, n in counts.items() if n),
    })
    failed = t.runs[t.runs.status == "failed"]
    if len(failed):
        page.section("Failed runs", "Re-run the same `grokking sweep` command to retry them.")
        page.parts.append(frame_html(failed[["name", "attempts", "error"]]))
    (_language_sections if t.language else _modular_sections)(page, t)
    if not t.metrics:
        page.section("No metrics yet", "No run has written metrics.csv yet; re-run report-sweep once some have trained.")
    out = sweep.path / "report.html"
    page.write(out)
    return out


def _language_sections(page: Page, t: SweepTables) -> None:
    page.section(f"Who generalises: final gen accuracy >= {GEN_SUCCESS:.0%}",
                 "Murty et al. 2023: the fraction of seeds that grok is an inverted U over depth (best QF 6 layers, "
                 "9/10 seeds above 80% at 300k steps; TI 4 layers, 8/10). Aggregates cover finished runs only.")
    page.figure(success_figure(t))
    page.section("Early stopping vs extended training",
                 f"Gen accuracy where early stopping on in-distribution validation accuracy would have stopped: at the "
                 f"first evaluation reaching the run's maximum val accuracy, or once val accuracy had not improved for "
                 f"{t.patience} evaluations. The paper: QF-6 early stopping 7.3% gen vs 92.9% after 300k steps.")
    page.figure(early_vs_final_figure(t))
    page.figure(gen_curves_figure(t))
    page.section("Per setting (summary.csv)")
    page.parts.append(frame_html(t.summary))
    if t.summary.analysed.sum():
        page.section("Final progress measures by setting",
                     "From each run's analysis.csv (`grokking analyze RUN_DIR`): in the paper weight norm and attention "
                     "sparsity grow for every depth, and tscore is what tracks the winner.")
        page.figure(measures_figure(t))
    else:
        page.section("Final progress measures by setting",
                     "No run has analysis.csv yet: run `grokking analyze` on the run directories for tscore, weight norm "
                     "and attention sparsity by setting.")
    page.section("Per run (runs.csv)")
    cols = ["name", "status", "step_at_max_val", "gen_at_max_val", "step_at_patience_stop", "gen_at_patience_stop",
            "gen_at_end", "max_gen", "first_step_gen_above_80", *(f"{c}_final" for c in FINAL_MEASURES)]
    page.parts.append(frame_html(t.runs[[c for c in cols if c in t.runs]]))


def _modular_sections(page: Page, t: SweepTables) -> None:
    note = (f"Step at which test accuracy first reaches {GROK_THRESHOLD:.0%}. The grey line is Nanda et al.'s released "
            "training-fraction sweep (epochs, i.e. full-batch steps, until their stopping rule fired): that rule is not "
            f"exactly {GROK_THRESHOLD:.0%} test accuracy, so compare shapes, not exact steps.")
    if "weight_decay" in t.keys:
        note += " For weight decay the paper reports: 0.3 groks in ~3k epochs, 1.0 in 5-10k, 3.0 in ~20k, 0 not at all."
    page.section("When does it grok?", note)
    page.figure(grok_step_figure(t))
    page.figure(test_curves_figure(t))
    page.section("Per setting (summary.csv)")
    shown = t.summary.copy()
    shown["step_test_acc_99_mean"] = [f"{v:.0f}" if v == v else ("did not grok" if n else "-")
                                      for v, n in zip(shown.step_test_acc_99_mean, shown.done)]
    page.parts.append(frame_html(shown))
    page.section("Per run (runs.csv)")
    runs = t.runs.copy()
    if "step_test_acc_99" in runs:
        runs["step_test_acc_99"] = [("did not grok" if s == "done" else "-") if v is None or v != v else f"{v:.0f}"
                                    for v, s in zip(runs.step_test_acc_99, runs.status)]
    page.parts.append(frame_html(runs[[c for c in ("name", "status", "final_step", "final_test_acc", "step_test_acc_99", "seconds")
                                       if c in runs]]))
