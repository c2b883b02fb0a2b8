"""One run of a sweep, trained wherever an executor put it: in the driver, a subprocess or a Ray task.

Every executor calls `run_job`, so a run trains the same way (`grokking.train.train` into its run
directory, progress bar off) whichever executor ran it, and its outcome comes back as plain data.
As a script (`python -m grokking.experiments.worker JOB_JSON`) it prints the outcome as one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from grokking.errors import UserError

MAX_ERROR = 300


@dataclass(frozen=True)
class Job:
    """What a worker needs: the run's name, its full config (RunConfig.to_dict) and its absolute run directory."""

    name: str
    config: dict[str, Any]
    out: str


@dataclass(frozen=True)
class Outcome:
    """`done`, `failed` (with a one-line error, and a traceback when it is a bug) or `interrupted` (resumable)."""

    status: str
    error: str | None = None
    seconds: float | None = None
    traceback: str | None = None


# The executor's reports to the driver: a run started; a run ended with this outcome.
Started = Callable[[Job], None]
Finished = Callable[[Job, Outcome], None]


def one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


def run_job(job: Job) -> Outcome:
    """Train (or resume) one run in this process; never raises, so an executor only relays the outcome."""
    start = time.perf_counter()
    try:
        from grokking.config import RunConfig
        from grokking.train import TrainingInterrupted, train

        try:
            train(RunConfig.from_dict(job.config), job.out, progress=False)
        except TrainingInterrupted:
            return Outcome("interrupted", seconds=time.perf_counter() - start)
    except KeyboardInterrupt:
        return Outcome("interrupted", seconds=time.perf_counter() - start)
    except Exception as exc:
        detail = None if isinstance(exc, UserError) else traceback.format_exc()
        return Outcome("failed", one_line(exc), time.perf_counter() - start, detail)
    return Outcome("done", seconds=time.perf_counter() - start)


def main() -> None:
    outcome = run_job(Job(**json.loads(sys.argv[1])))
    print(json.dumps(asdict(outcome)), flush=True)


if __name__ == "__main__":
    main()
