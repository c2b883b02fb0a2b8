"""Fault-injection helpers: a small real disk, forked processes that die where told, byte-level comparisons.

Faults are real where the machine allows it: ENOSPC comes from a full tmpfs the test mounts, a kill is
SIGKILL delivered to a forked process (no handler, no cleanup runs), and a lock is contended by another
process. Forking the already-warm test process keeps each faulted attempt at a fraction of a second
instead of the ~10 s a fresh `python -m grokking.cli` spends importing torch here.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import TINY_SETS, tiny_config


def in_child(fn: Callable[[], object]) -> int:
    """Run `fn` in a forked child and return how it ended: 0, 1 (it raised; traceback on stderr) or -signal."""
    return finish_child(start_child(fn))


def start_child(fn: Callable[[], object]) -> int:
    """Fork a child running `fn` and return its pid at once (reap it with `finish_child`)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            import torch

            torch.set_num_threads(1)  # a forked child must not use an OpenMP pool inherited from the parent
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):  # os._exit skips Python's own flush
                stream.flush()
            os._exit(code)
    return pid


def finish_child(pid: int) -> int:
    """Reap a child: 0, 1 (it raised) or -signal (-9 for SIGKILL)."""
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def pause_training_at(step: int, flag: Path, go: Path | None = None) -> None:
    """In a child: at update `step` create `flag`, then wait for `go` (forever without one: the test kills it)."""
    import time

    from grokking.train import Trainer

    real_update = Trainer.update

    def update(self, loss):
        if self.step == step and not flag.exists():
            flag.touch()
            while go is None or not go.exists():
                time.sleep(0.02)
        real_update(self, loss)

    Trainer.update = update


def tiny_sweep(grid: dict[str, list], seeds: list[int], steps: int = 60):
    """A sweep of `tiny_config`-sized runs (the same --set values) over `grid` and `seeds`."""
    from grokking.experiments import SweepSpec

    return SweepSpec("quick", grid, seeds, dict(TINY_SETS), steps)


def die() -> None:
    """SIGKILL this process: nothing after it runs, no finally, no flush, no signal handler."""
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for(path: Path, pid: int, timeout: float = 120.0) -> None:
    """Block until `path` exists (a child announces it reached a point); fail if the child died first."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        done, _ = os.waitpid(pid, os.WNOHANG)
        assert done == 0, f"child {pid} exited before creating {path}"
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.02)


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under `root` by relative path, except dot-files (the lock, temporaries)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def fill(disk: Path) -> Path:
    """Write a ballast file until the disk answers ENOSPC: after this, any write that needs a new page fails."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return ballast


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for this test (needs root and mount rights; skipped with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; disk-full cases not run")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); disk-full cases not run")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture(scope="session", autouse=True)
def warm_single_thread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One thread in this process while the fault cases run, and a first tiny training done here.

    Forked children inherit what the first training warms up (about 5 s here, once), and a
    single-threaded parent has no OpenMP pool for a child to inherit half-made.
    """
    import torch

    from grokking.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train(tiny_config(steps="2"), tmp_path_factory.mktemp("warm") / "run", progress=False)
    yield
    torch.set_num_threads(threads)


def training_files(root: Path) -> dict[str, bytes]:
    """`files_of` without what `grokking analyze` and `grokking report` add."""
    from grokking.store import DERIVED_FILES

    return {name: data for name, data in files_of(root).items() if name not in DERIVED_FILES}
