"""The Ray executor: each run is a Ray task, on an existing cluster (`--address host:port`, or `auto`
for the one `ray start` runs on this machine) or on a fresh local instance started for the sweep.

Only the driver writes sweep.json; a task trains one run and returns its outcome. Workers need not
share a disk with the driver. The driver leaves a token file in SWEEP_DIR/runs/ for the duration of
the sweep; a task that sees it trains straight into the run directory (same machine or a shared
filesystem). A task that does not see it trains in a local temporary directory, starting from the
run's config, metrics and resume state sent by the driver (so a retried run resumes), and returns
every file of the run directory as bytes, which the driver writes atomically into the sweep
directory. Results land in the same layout either way. A task lost with its node or worker process is
resubmitted by Ray (up to NODE_FAILURE_RETRIES times), on another node when its own is gone.

Ray is imported only here and only when this executor is used (`pip install 'grokking[ray]'`).
"""

from __future__ import annotations

import importlib.util
import logging
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from grokking.errors import UserError
from grokking.experiments.worker import Finished, Job, Outcome, Started, one_line, run_job
from grokking.store import CONFIG_FILE, METRICS_FILE, RESUME_FILE, atomic_write

RESUME_FILES = (CONFIG_FILE, METRICS_FILE, RESUME_FILE)
WRITE_LAST = (METRICS_FILE, RESUME_FILE, CONFIG_FILE)  # config.json last: a half-written run looks unstarted
STOP_GRACE_SECONDS = 120.0
NODE_FAILURE_RETRIES = 3


def train_task(job: dict[str, Any], token: str, files: dict[str, bytes], threads: int) -> dict[str, Any]:
    """The Ray task: train one run in place on a shared disk, else in a temporary directory and return its files."""
    import torch

    torch.set_num_threads(threads)
    if Path(token).is_file():
        return {**asdict(run_job(Job(**job))), "files": None}
    with tempfile.TemporaryDirectory(prefix="grokking-run-") as tmp:
        run_dir = Path(tmp) / Path(job["out"]).name
        write_tree(run_dir, files)
        outcome = run_job(Job(**{**job, "out": str(run_dir)}))
        return {**asdict(outcome), "files": read_tree(run_dir)}


def read_tree(root: Path, names: tuple[str, ...] | None = None) -> dict[str, bytes]:
    """Files under `root` as {relative posix path: bytes} (only `names` at the top level when given)."""
    if not root.is_dir():
        return {}
    paths = [root / n for n in names if (root / n).is_file()] if names is not None else [p for p in root.rglob("*") if p.is_file()]
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in paths if not p.name.startswith(".")}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    """Write files atomically, the run's state files last, so an interrupted copy never looks finished."""
    for rel in sorted(files, key=lambda r: (r in WRITE_LAST, WRITE_LAST.index(r) if r in WRITE_LAST else 0, r)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, files[rel])


class RayExecutor:
    def __init__(self, address: str | None = None, num_cpus: float = 1.0, max_parallel: int | None = None, connect_timeout: float = 30.0):
        if num_cpus <= 0:
            raise UserError(f"--num-cpus must be positive, got {num_cpus}")
        if max_parallel is not None and max_parallel < 1:
            raise UserError(f"--max-parallel must be >= 1, got {max_parallel}")
        if importlib.util.find_spec("ray") is None:
            raise UserError("the Ray executor needs Ray: pip install 'grokking[ray]'")
        self.address, self.num_cpus, self.max_parallel, self.connect_timeout = address, num_cpus, max_parallel, connect_timeout
        if address not in (None, "auto"):
            check_reachable(address, connect_timeout)  # before Ray (seconds to import) and torch are loaded
        self._owns_connection = False

    def describe(self) -> str:
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        return f"{where} ({self.num_cpus:g} CPU per run)"

    def __enter__(self) -> RayExecutor:
        ray = import_ray()
        if ray.is_initialized():  # a notebook or test that called ray.init itself keeps its connection
            return self
        if self.address:
            probe(self.address, self.connect_timeout)
        try:
            # "local": a fresh instance, never a stale or foreign one that `ray start` left on this machine (that is --address auto).
            ray.init(address=self.address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError, ...: all mean "no cluster there"
            raise UserError(f"cannot connect to Ray at {self.address or 'a local instance'}: {one_line(exc)}") from None
        self._owns_connection = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owns_connection:
            import_ray().shutdown()
            self._owns_connection = False

    def run(self, jobs: list[Job], started: Started, finished: Finished) -> None:
        if not jobs:
            return
        ray = import_ray()
        # A node or worker process that dies takes its task with it: Ray resubmits it, elsewhere if the node is gone, with the
        # same arguments (the run's state when it was handed out), so a retried run resumes as the first attempt did.
        # An exception inside the task is an outcome, not a crash, and is never retried.
        task = ray.remote(num_cpus=self.num_cpus, max_retries=NODE_FAILURE_RETRIES)(train_task)
        threads = max(1, int(self.num_cpus))
        token = Path(jobs[0].out).parent / f".ray-driver-{uuid.uuid4().hex}"  # every run directory shares this parent
        token.parent.mkdir(parents=True, exist_ok=True)
        token.touch()
        queue, running = list(jobs), {}

        def collect(ref: Any, job: Job) -> Outcome:
            try:
                result = ray.get(ref)
            except Exception as exc:  # the worker died, the task was cancelled, the object was lost
                name = type(exc).__name__
                return Outcome("interrupted" if "Cancel" in name else "failed", None if "Cancel" in name else one_line(exc))
            files = result.pop("files")
            if files:
                write_tree(Path(job.out), files)
            return Outcome(**result)

        try:
            while queue or running:
                while queue and (self.max_parallel is None or len(running) < self.max_parallel):
                    job = queue.pop(0)
                    started(job)
                    ref = task.remote(asdict(job), str(token), read_tree(Path(job.out), RESUME_FILES), threads)
                    running[ref] = job
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    job = running.pop(ref)
                    outcome = collect(ref, job)
                    finished(job, outcome)
                    if outcome.status == "interrupted":
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            for ref in running:
                ray.cancel(ref)  # a KeyboardInterrupt in the task: training stops and keeps its resume state
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for ref, job in running.items():
                ready, _ = ray.wait([ref], timeout=max(0.0, deadline - time.monotonic()))
                finished(job, collect(ref, job) if ready else Outcome("interrupted"))
            raise
        finally:
            token.unlink(missing_ok=True)


def import_ray() -> Any:
    import ray  # RayExecutor() checked that it is installed

    return ray


FIX = "check the head node's host:port (`ray start --head` prints it), or drop --address to start a local instance"


def check_reachable(address: str, timeout: float) -> None:
    """A TCP connect to host:port: instant for a refused port or an unknown host."""
    if not re.fullmatch(r"(ray://)?[^:/\s]+:\d+", address):
        raise UserError(f"--address must be host:port, ray://host:port or auto, got '{address}'")
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(f"cannot reach a Ray cluster at {address} ({exc.strerror or type(exc).__name__}); {FIX}") from None


def probe(address: str, timeout: float) -> None:
    """Fail within `timeout` seconds, in one line, unless a Ray cluster answers at `address`.

    `ray.init` on a wrong address retries for minutes and prints C++ warnings straight to stderr, so
    the first connection is a throw-away one in a subprocess whose output is captured and whose time is capped.
    """
    code = (
        "import logging, sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, "
        "logging_level=logging.ERROR); ray.shutdown()"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        said = _last_complaint(exc.stderr)
        raise UserError(f"no Ray cluster answered at {address} within {timeout:g} s{f' (Ray said: {said})' if said else ''}; {FIX}") from None
    if done.returncode != 0:
        raise UserError(f"cannot connect to Ray at {address}: {_last_complaint(done.stderr) or 'unknown error'}; {FIX}")


def _last_complaint(stderr: str | bytes | None) -> str:
    """Ray's last warning or error line, without its log prefix: the reason a connection failed."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr or ""
    lines = [line for line in text.splitlines() if "Error" in line or " W " in line or " E " in line]
    return " ".join(lines[-1].split("] ", 1)[-1].split())[:200] if lines else ""
