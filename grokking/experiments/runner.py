"""The sweep driver: plans the runs, hands the unfinished ones to an executor, keeps sweep.json current.

Runs are handed out seed-major (every grid setting for the first seed, then the next seed), so a
sweep stopped half-way already covers every setting. The driver is the only writer of sweep.json;
executors report through two callbacks, `started` and `finished`, always on the driver's thread.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from grokking.experiments.local import LocalExecutor
from grokking.experiments.sweep import Sweep, SweepSpec, plan_sweep
from grokking.experiments.worker import Finished, Job, Outcome, Started
from grokking.store import directory_lock

STATUS_AFTER = {"done": "done", "failed": "failed", "interrupted": "pending"}


class Executor(Protocol):
    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def describe(self) -> str: ...

    def run(self, jobs: list[Job], started: Started, finished: Finished) -> None:
        """Run every job, calling started(job) and finished(job, outcome); on Ctrl-C stop them and re-raise."""


class SweepInterrupted(Exception):
    """Ctrl-C stopped the sweep cleanly; re-running the same command resumes it."""


def run_sweep(
    spec: SweepSpec, out: str | Path | None = None, executor: Executor | None = None, device: str | None = None, progress: bool = True
) -> Sweep:
    """Run (or resume) every unfinished run of the sweep; returns the sweep with each run's final status.

    The driver holds SWEEP_DIR/.lock throughout (`store.directory_lock`): a second sweep pointed at the
    same directory refuses in one line, and a killed driver frees it.
    """
    path = Path(out if out is not None else spec.default_out())
    plan_sweep(spec, path)  # a bad grid or --set fails before anything is written
    with directory_lock(path, "`grokking sweep`"):
        return _run_locked(spec, path, executor, device, progress)


def _run_locked(spec: SweepSpec, out: Path, executor: Executor | None, device: str | None, progress: bool) -> Sweep:
    """`run_sweep` once the lock is held: the plan is made again under it, from what is on disk now."""
    sweep = plan_sweep(spec, out)
    executor = executor or LocalExecutor()
    todo = sorted((r for r in sweep.runs if r.status != "done"), key=lambda r: spec.seeds.index(r.params["seed"]))
    jobs = [Job(r.name, sweep.config(r, device).to_dict(), str(r.dir.resolve())) for r in todo]
    by_name = {r.name: r for r in sweep.runs}
    with executor if jobs else nullcontext():  # nothing to run: no Ray instance to start
        (sweep.path / "runs").mkdir(parents=True, exist_ok=True)
        sweep.save()
        if progress:
            done = len(sweep.runs) - len(todo)
            tqdm.write(f"sweep {spec.preset}: {len(sweep.runs)} runs, {done} already done; {len(todo)} on {executor.describe()} -> {sweep.path}")
        bar = tqdm(total=len(sweep.runs), initial=len(sweep.runs) - len(todo), desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
        running: list[str] = []

        def show() -> None:
            failed = sum(r.status == "failed" for r in sweep.runs)
            shown = ", ".join(running[:2]) + (f" +{len(running) - 2}" if len(running) > 2 else "")
            bar.set_postfix_str(" | ".join(filter(None, [f"running {shown}" if running else "", f"{failed} failed" if failed else ""])))

        def started(job: Job) -> None:
            run = by_name[job.name]
            run.status, run.error = "running", None
            run.attempts += 1
            sweep.save()
            running.append(job.name)
            show()

        def finished(job: Job, outcome: Outcome) -> None:
            run = by_name[job.name]
            run.status, run.error = STATUS_AFTER[outcome.status], outcome.error
            run.seconds = outcome.seconds if outcome.seconds is not None else run.seconds
            sweep.save()
            if job.name in running:
                running.remove(job.name)
            if outcome.status != "interrupted":
                bar.update(1)
            if outcome.status == "failed":
                bar.write(f"failed {job.name}: {outcome.error}")
                if outcome.traceback:
                    bar.write(outcome.traceback.rstrip())
            show()

        try:
            with _sigterm_as_interrupt():
                executor.run(jobs, started, finished)
        except KeyboardInterrupt:
            for run in sweep.runs:
                if run.status == "running":
                    run.status = "pending"
            sweep.save()
            raise SweepInterrupted(
                f"sweep interrupted; finished runs are kept and running ones saved their state in {sweep.path}. Re-run the same command to resume."
            ) from None
        finally:
            bar.close()
    return sweep


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's or `kill`'s stop) stops the sweep as cleanly as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
