"""Promise: SIGKILL at any point of training, checkpoint writing or the analysis pass loses nothing.

20 seeded kill points (16 in training and checkpoint/metrics/resume writes, 4 in the analysis pass) hit one
run in turn; after each, the same call resumes. The final run directory (weights, resume state, metrics.csv)
and analysis.csv are byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from grokking.store import RunDir, checkpoint_name
from grokking.train import is_checkpoint_step

from conftest import tiny_config
from faults.conftest import die, in_child, tiny_sweep, training_files

SEED = 20
TRAIN_KILLS, ANALYSIS_KILLS = 16, 4
# Within one step, events happen in this order; kill points are sorted by (step, order) so each is reached.
TRAIN_KINDS = ("metrics-torn", "resume-rename", "checkpoint-fsync", "checkpoint-rename", "update")
ANALYSIS_KINDS = ("row", "save")


def config():
    return tiny_config(eval_every="5", checkpoint_every="10")


def kill_points() -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The seeded kill points: (step, kind), in the order a run meets them."""
    rng = random.Random(SEED)
    tr = config().train
    steps = {"metrics-torn": [s for s in range(tr.steps + 1) if s % tr.eval_every == 0 or s == tr.steps], "update": list(range(tr.steps))}
    for kind in ("checkpoint-fsync", "checkpoint-rename", "resume-rename"):
        steps[kind] = [s for s in range(tr.steps + 1) if is_checkpoint_step(s, tr)]
    train = [(s, kind) for kind in (rng.choice(TRAIN_KINDS) for _ in range(TRAIN_KILLS)) for s in [rng.choice(steps[kind])]]
    analysis = [(rng.choice(steps["checkpoint-fsync"]), rng.choice(ANALYSIS_KINDS)) for _ in range(ANALYSIS_KILLS)]
    return (sorted(train, key=lambda p: (p[0], TRAIN_KINDS.index(p[1]))), sorted(analysis, key=lambda p: (p[0], ANALYSIS_KINDS.index(p[1]))))


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def train_killed_at(out: Path, step: int, kind: str) -> None:
    """In a forked child: arm one kill point by patching what the run calls there, then train."""
    import grokking.train as train_module

    real_write, real_fsync, real_replace = os.write, os.fsync, os.replace
    if kind == "update":
        real_update = train_module.Trainer.update

        def update(self, loss):
            if self.step == step:
                die()
            real_update(self, loss)

        train_module.Trainer.update = update
    elif kind == "metrics-torn":

        def write(fd, data):
            if _fd_path(fd).endswith("metrics.csv") and bytes(data).startswith(f"{step},".encode()):
                real_write(fd, bytes(data)[: len(data) // 2])
                die()
            return real_write(fd, data)

        os.write = write
    elif kind == "checkpoint-fsync":

        def fsync(fd):
            if checkpoint_name(step) in _fd_path(fd):
                die()
            real_fsync(fd)

        os.fsync = fsync
    else:
        real_write_resume, resume_step = RunDir.write_resume, [None]

        def write_resume(self, tensors, metadata):
            resume_step[0] = int(metadata["step"])
            real_write_resume(self, tensors, metadata)

        def replace(src, dst):
            name = Path(dst).name
            if kind == "checkpoint-rename" and name == checkpoint_name(step):
                die()
            if kind == "resume-rename" and name == "resume.safetensors" and resume_step[0] == step:
                die()
            real_replace(src, dst)

        RunDir.write_resume = write_resume
        os.replace = replace
    train_module.train(config(), out, progress=False)


def analyse_killed_at(out: Path, step: int, kind: str) -> None:
    import grokking.analysis.progress as progress

    progress.SAVE_EVERY_SECONDS = 0.0  # save after every row, so kills land between saves too
    real_row, real_replace = progress.ModularPlan.row, os.replace
    last = [-1]

    def row(self, s):
        if kind == "row" and s == step:
            die()
        last[0] = s
        return real_row(self, s)

    def replace(src, dst):
        if kind == "save" and Path(dst).name == "analysis.csv" and last[0] == step:
            die()
        real_replace(src, dst)

    progress.ModularPlan.row = row
    os.replace = replace
    progress.analyze(out, progress=False)


def test_twenty_seeded_sigkills_then_resume_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    from grokking.analysis.progress import analyze
    from grokking.train import train

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert in_child(lambda: (train(config(), reference, progress=False), analyze(reference, progress=False))) == 0
    train_points, analysis_points = kill_points()
    assert len(train_points) + len(analysis_points) == 20 and len({k for _, k in train_points}) >= 3

    for step, kind in train_points:
        assert in_child(lambda: train_killed_at(killed, step, kind)) == -9, f"kill point {kind}@{step} was not reached"
    assert in_child(lambda: train(config(), killed, progress=False)) == 0
    assert training_files(killed) == training_files(reference)  # every checkpoint, resume.safetensors, metrics.csv, config.json

    for step, kind in analysis_points:
        assert in_child(lambda: analyse_killed_at(killed, step, kind)) == -9, f"kill point {kind}@{step} was not reached"
    assert in_child(lambda: analyze(killed, progress=False)) == 0
    assert (killed / "analysis.csv").read_bytes() == (reference / "analysis.csv").read_bytes()
    assert training_files(killed) == training_files(reference)


def test_sweep_driver_killed_between_last_row_and_last_checkpoint_finishes_the_run(tmp_path: Path) -> None:
    """A run whose metrics reach the last step but whose last checkpoint is missing is not done: the re-run finishes it."""
    from grokking.experiments import load_sweep, run_sweep

    spec = tiny_sweep({"weight_decay": [1.0]}, [0])
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert in_child(lambda: run_sweep(spec, reference, progress=False)) == 0

    def killed_at_the_last_checkpoint() -> None:
        real_replace = os.replace

        def replace(src, dst):
            if Path(dst).name == checkpoint_name(60):
                die()
            real_replace(src, dst)

        os.replace = replace
        run_sweep(spec, killed, progress=False)

    assert in_child(killed_at_the_last_checkpoint) == -9
    assert in_child(lambda: run_sweep(spec, killed, progress=False)) == 0
    run = load_sweep(killed).runs[0]
    assert run.status == "done" and run.attempts == 2
    assert training_files(run.dir) == training_files(reference / "runs" / run.name)
