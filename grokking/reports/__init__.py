"""Reports: plotly figures and self-contained HTML pages, built from a run's tables only."""

from __future__ import annotations

from pathlib import Path

from grokking.families import family_of
from grokking.store import RunDir


def write_report(run_dir: str | Path, patience: int = 5) -> Path:
    """RUN_DIR/report.html for any run: the page its task family names (grokking/families.py); `patience` is the
    early-stopping rule of the language runs' page."""
    run = RunDir(run_dir).require()
    return family_of(run.read_config().task.task).resolve("report")(run.path, patience)


# The family report writers whose own signature is not the registry's `(run_dir, patience) -> Path`.


def modular_report(run_dir: Path, patience: int) -> Path:
    """The Fourier page; modular runs have no early-stopping rule."""
    from grokking.reports.modular import write_report as modular

    return modular(run_dir)


def icl_report(run_dir: Path, patience: int) -> Path:
    """Errors against the baselines; icl-functions runs have no early-stopping rule."""
    from grokking.reports.icl import write_icl_report

    return write_icl_report(run_dir)


def addition_report(run_dir: Path, patience: int) -> Path:
    """Digit addition has no structure to project: its report is the metric lens over training."""
    from grokking.reports.metric_lens import write_run_lens

    return write_run_lens(run_dir, RunDir(run_dir).report_path.name)
