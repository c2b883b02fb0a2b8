"""What `grokking data TASK` prints or writes, per family (each family's `data` in grokking/families.py).

A handler takes the command's options as one `DataRequest` and yields the lines to print, so the command
itself knows no family.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from grokking.config import TaskConfig
from grokking.errors import UserError
from grokking.tasks.lm_data import Example


@dataclass(frozen=True)
class DataRequest:
    task: str
    split: str = "train"
    n: int = 5  # examples to print
    seed: int = 0
    export: Path | None = None  # write every split in the published format here
    mix: str = "published"
    stats: bool = False
    directory: Path | None = None  # with `stats`: files to describe instead of the generated ones


def language_data(req: DataRequest) -> Iterator[str]:
    """Synthetic languages: examples of a split, `export` (the generated, seeded, cached splits), or `stats`
    (the structure mix against the published one; Dyck: lengths, depths and unseen structures)."""
    from grokking.tasks import dyck, structure_mix
    from grokking.tasks.registry import get_lm_task

    lm_task = get_lm_task(req.task, req.mix)
    if req.directory is not None and not req.stats:
        raise UserError(f"a data directory ({req.directory}) is only read with --stats")
    if req.stats:
        if req.directory is None:
            lm_task.splits(seed=req.seed)  # generated (or read from the cache) and on disk
        report = structure_mix.stats_report if lm_task.structure else dyck.stats_report
        yield from report(lm_task, req.directory or lm_task.cache_dir(req.seed))
        return
    if req.export is not None:
        yield from map(str, lm_task.export(req.export, seed=req.seed))
        return
    yield from _examples(req, lm_task.splits(seed=req.seed))


def addition_data(req: DataRequest) -> Iterator[str]:
    """Digit addition with the default `n_digits`, `n_train` and `eval_examples` test pairs: examples of the train or
    test split, or `export` (files `addition.train` / `addition.test`). Runs make the same data in memory."""
    from grokking.tasks import digit_addition

    if req.stats or req.directory is not None:
        raise UserError("digit-addition has no --stats: its operand pairs are uniform over all n-digit pairs")
    t = TaskConfig(task=req.task)
    task = digit_addition.make_task(t.n_digits, t.n_train, t.eval_examples)
    splits = task.generate(req.seed)
    if req.export is not None:
        yield from map(str, task.write(req.export, splits))
        return
    yield from _examples(req, splits)


def _examples(req: DataRequest, splits: dict[str, list[Example]]) -> Iterator[str]:
    if req.split not in splits:
        raise UserError(f"{req.task} has no split '{req.split}'; choose one of {', '.join(splits)}")
    for example in splits[req.split][: req.n]:
        yield f"{example.input}\t{example.target}" if example.target else example.input
