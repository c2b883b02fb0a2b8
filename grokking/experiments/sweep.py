"""The sweep directory and its state file, sweep.json: the contract every executor and report shares.

    SWEEP_DIR/sweep.json     spec (preset, grid, seeds, set, steps) and one entry per run
    SWEEP_DIR/runs/<name>/   ordinary run directories (grokking.train.train wrote them; `grokking.store.RunDir`)
    SWEEP_DIR/summary.csv    grokking report-sweep: one row per setting
    SWEEP_DIR/runs.csv       grokking report-sweep: one row per run
    SWEEP_DIR/report.html    grokking report-sweep
    SWEEP_DIR/metric_lens.html, metric_lens.csv, metric_lens_by_scale.csv   grokking metric-lens SWEEP_DIR
    SWEEP_DIR/.lock          held by the driver

Only the driver writes sweep.json, atomically, after every status change, so a reader (a report, a
notebook, a second terminal) always sees a whole file. `load_sweep` is the one reader of a sweep
directory: reports, the metric lens and notebooks read the runs' tables through `Sweep.metrics`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grokking.errors import UserError
from grokking.experiments.grid import grid_params, run_config, run_name
from grokking.store import DERIVED, RunDir, atomic_write

if TYPE_CHECKING:
    import pandas as pd

    from grokking.config import RunConfig
    from grokking.run import Run

STATE_FILE = "sweep.json"
SUMMARY_FILE, RUNS_FILE, REPORT_FILE = "summary.csv", "runs.csv", "report.html"
# The metric lens writes the same page and table into a sweep as into a run, plus the per-scale table.
METRIC_LENS_PAGE, METRIC_LENS_TABLE = DERIVED["metric_lens_page_path"], DERIVED["metric_lens_path"]
METRIC_LENS_BY_SCALE = "metric_lens_by_scale.csv"
STATUSES = ("pending", "running", "done", "failed")


@dataclass
class SweepSpec:
    """What to run. `grid` values are typed (see grid.parse_grid); `set` values are the raw `--set` strings."""

    preset: str
    grid: dict[str, list[Any]]
    seeds: list[int]
    set: dict[str, str] = field(default_factory=dict)
    steps: int | None = None

    def __post_init__(self) -> None:
        # As JSON gives them back, so that a resumed sweep compares equal to the one it started as.
        self.grid = {k: [list(v) if isinstance(v, tuple) else v for v in values] for k, values in self.grid.items()}
        self.seeds = [int(s) for s in self.seeds]

    def default_out(self) -> Path:
        return Path("checkpoints") / "sweeps" / "-".join([self.preset, *(self.grid or ["seeds"])])


@dataclass
class SweepRun:
    """One run of the sweep; `dir` is its run directory (absolute when the sweep was opened by absolute path)."""

    name: str
    params: dict[str, Any]
    dir: Path
    status: str = "pending"
    attempts: int = 0
    error: str | None = None
    seconds: float | None = None

    def run(self) -> Run:
        """The run directory opened with `grokking.load_run` (imports torch)."""
        from grokking.run import load_run

        return load_run(self.dir)

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.dir)

    def last_step(self) -> int | None:
        """The step of the last whole metrics.csv row (see `RunDir.last_metric_step`)."""
        return self.run_dir.last_metric_step()


class Sweep:
    """A sweep directory: its spec, its runs and their status; `save()` rewrites sweep.json."""

    def __init__(self, path: Path, spec: SweepSpec, runs: list[SweepRun]):
        self.path, self.spec, self.runs = path, spec, runs

    @property
    def preset(self) -> str:
        return self.spec.preset

    @property
    def grid(self) -> dict[str, list[Any]]:
        return self.spec.grid

    @property
    def seeds(self) -> list[int]:
        return self.spec.seeds

    def config(self, run: SweepRun, device: str | None = None) -> RunConfig:
        return run_config(self.spec.preset, self.spec.set, run.params, self.spec.steps, device)

    def save(self) -> None:
        spec = self.spec
        data = {
            "preset": spec.preset,
            "grid": spec.grid,
            "seeds": spec.seeds,
            "set": spec.set,
            "steps": spec.steps,
            "runs": [
                {
                    "name": r.name,
                    "params": r.params,
                    "dir": f"runs/{r.name}",
                    "status": r.status,
                    "attempts": r.attempts,
                    "error": r.error,
                    "seconds": r.seconds,
                }
                for r in self.runs
            ],
        }
        atomic_write(self.path / STATE_FILE, (json.dumps(data, indent=2) + "\n").encode())

    def table(self) -> pd.DataFrame:
        """One row per run: name, the grid parameters and seed, status, attempts, seconds, error."""
        import pandas as pd

        return pd.DataFrame(
            [{"name": r.name, **r.params, "status": r.status, "attempts": r.attempts, "seconds": r.seconds, "error": r.error} for r in self.runs]
        )

    def metrics(self) -> dict[str, pd.DataFrame]:
        """Each run's metrics.csv (whole rows), by run name, for the runs that have written at least one row."""
        tables = {r.name: r.run_dir.read_metrics_table() for r in self.runs}
        return {name: table for name, table in tables.items() if len(table)}

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.runs) for s in STATUSES}

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        return f"Sweep({str(self.path)!r}, preset={self.preset!r}, grid={self.grid}, seeds={self.seeds}: {counts})"


def load_sweep(path: str | Path) -> Sweep:
    """Open a sweep directory (or its sweep.json) for reading."""
    path = Path(path)
    if path.name == STATE_FILE:
        path = path.parent
    try:
        data = json.loads((path / STATE_FILE).read_text())
        spec = SweepSpec(data["preset"], data["grid"], data["seeds"], data.get("set", {}), data.get("steps"))
        runs = [
            SweepRun(r["name"], r["params"], path / r["dir"], r["status"], r.get("attempts", 0), r.get("error"), r.get("seconds"))
            for r in data["runs"]
        ]
    except FileNotFoundError:
        raise UserError(f"no sweep at {path} (no {STATE_FILE}); start one with `grokking sweep PRESET --grid key=v1,v2 --out {path}`") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read {path / STATE_FILE}: {exc}") from None
    return Sweep(path, spec, runs)


def plan_sweep(spec: SweepSpec, out: str | Path) -> Sweep:
    """The sweep at `out`, new or resumed (same preset, grid and --set; seeds and steps may change), unsaved.

    Every run's config is built and validated first, so a bad value fails before anything is written.
    Each run's status is re-derived from its directory: a run whose metrics reach the configured steps,
    with the checkpoint of its last row written, is done (whatever sweep.json said), one left `running`
    by a killed driver is pending again.
    """
    out = Path(out)
    for key in ("seed", *spec.grid):
        if key in spec.set:
            raise UserError(f"{key} is both swept and fixed by --set {key}={spec.set[key]}; drop one of them")
    configs = {run_name(p): p for p in grid_params(spec.grid, spec.seeds)}
    previous: dict[str, SweepRun] = {}
    if (out / STATE_FILE).is_file():
        old = load_sweep(out)
        if (old.spec.preset, old.spec.grid, old.spec.set) != (spec.preset, spec.grid, spec.set):
            raise UserError(
                f"{out} holds another sweep ({_describe(old.spec)}); use another --out, or repeat that "
                f"preset, grid and --set (only --seeds and --steps may change)"
            )
        previous = {r.name: r for r in old.runs}
    runs = [previous.get(name) or SweepRun(name, params, out / "runs" / name) for name, params in configs.items()]
    sweep = Sweep(out, spec, runs)
    for run in runs:
        target = sweep.config(run).train.steps
        last = run.last_step()
        # The final checkpoint follows the final metrics row: a driver killed between the two has not finished the run.
        if last is not None and last >= target and run.run_dir.checkpoint_path(last).is_file():
            run.status, run.error = "done", None
        elif run.status in ("running", "done"):
            run.status = "pending"
    return sweep


def _describe(spec: SweepSpec) -> str:
    sets = " ".join(f"--set {k}={v}" for k, v in spec.set.items())
    grid = " ".join(f"--grid {k}={','.join(map(str, v))}" for k, v in spec.grid.items())
    return " ".join(filter(None, [spec.preset, grid, sets]))
