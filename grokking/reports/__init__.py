"""Reports: plotly figures and self-contained HTML pages, built from a run's tables only."""

from __future__ import annotations

import json
from pathlib import Path

from grokking.errors import UserError


def write_report(run_dir: str | Path, patience: int = 5) -> Path:
    """RUN_DIR/report.html for any run: Fourier for modular runs, the metric lens for digit addition, structural otherwise
    (`patience` is its early-stopping rule)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.json); pass the directory that `grokking train` wrote")
    task = json.loads((run_dir / "config.json").read_text())["task"]["task"]
    if task == "modular":
        from grokking.reports.modular import write_report as modular
        return modular(run_dir)
    if task == "icl-functions":
        from grokking.reports.icl import write_icl_report
        return write_icl_report(run_dir)
    if task == "digit-addition":  # no structure to project: its report is the metric lens over training
        from grokking.reports.metric_lens import write_run_lens
        return write_run_lens(run_dir, "report.html")
    from grokking.reports.structural import write_structural_report
    return write_structural_report(run_dir, patience)
