"""The local executor: runs one after another in this process, or up to N worker subprocesses at once.

In-process is the default because it costs nothing per run (torch is imported once). With
`max_parallel > 1` each run is a `python -m grokking.experiments.worker` subprocess given
cores // max_parallel threads, so parallel runs do not fight over the cores. Either way Ctrl-C lets
the running trainings save their resume state, reports them as interrupted and re-raises.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from typing import IO

from grokking.errors import UserError
from grokking.experiments.worker import Finished, Job, Outcome, Started, run_job

POLL_SECONDS = 0.1
STOP_GRACE_SECONDS = 120.0


class LocalExecutor:
    def __init__(self, max_parallel: int = 1):
        if max_parallel < 1:
            raise UserError(f"--max-parallel must be >= 1, got {max_parallel}")
        self.max_parallel = max_parallel

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def describe(self) -> str:
        return "this process" if self.max_parallel == 1 else f"{self.max_parallel} local subprocesses of {self.threads()} threads"

    def threads(self) -> int:
        return max(1, (os.cpu_count() or 1) // self.max_parallel)

    def run(self, jobs: list[Job], started: Started, finished: Finished) -> None:
        if self.max_parallel == 1:
            for job in jobs:
                started(job)
                outcome = run_job(job)
                finished(job, outcome)
                if outcome.status == "interrupted":
                    raise KeyboardInterrupt
        else:
            self._run_subprocesses(jobs, started, finished)

    def _run_subprocesses(self, jobs: list[Job], started: Started, finished: Finished) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads()), "MKL_NUM_THREADS": str(self.threads())}
        queue, running = list(jobs), {}
        try:
            while queue or running:
                while queue and len(running) < self.max_parallel:
                    job = queue.pop(0)
                    started(job)
                    running[job.name] = (job, _Worker(job, env))
                for name, (job, worker) in list(running.items()):
                    if worker.proc.poll() is not None:
                        del running[name]
                        outcome = worker.outcome()
                        finished(job, outcome)
                        if outcome.status == "interrupted":  # a worker got Ctrl-C: the user wants to stop
                            raise KeyboardInterrupt
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            for _, worker in running.values():
                worker.proc.send_signal(signal.SIGINT)  # a second SIGINT is harmless: it only sets the stop flag
            for job, worker in running.values():
                try:
                    worker.proc.wait(STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    worker.proc.kill()
                    worker.proc.wait()
                finished(job, worker.outcome())
            raise


class _Worker:
    """One worker subprocess; its output goes to temporary files, so a chatty run never blocks on a pipe."""

    def __init__(self, job: Job, env: dict[str, str]):
        self.start = time.perf_counter()
        self.stdout: IO[bytes] = tempfile.TemporaryFile()
        self.stderr: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grokking.experiments.worker", json.dumps(asdict(job))], stdout=self.stdout, stderr=self.stderr, env=env
        )

    def outcome(self) -> Outcome:
        out, err = (_read(f) for f in (self.stdout, self.stderr))
        seconds = time.perf_counter() - self.start
        lines = out.strip().splitlines()
        try:
            reported = Outcome(**json.loads(lines[-1]))
            return Outcome(reported.status, reported.error, seconds, reported.traceback)
        except (IndexError, json.JSONDecodeError, TypeError):
            if self.proc.returncode in (-signal.SIGINT, 130):
                return Outcome("interrupted", seconds=seconds)
            last = err.strip().splitlines()[-1] if err.strip() else ""
            return Outcome("failed", f"worker exited with code {self.proc.returncode}: {last}".strip(": "), seconds, err or None)


def _read(fh: IO[bytes]) -> str:
    fh.seek(0)
    text = fh.read().decode(errors="replace")
    fh.close()
    return text
