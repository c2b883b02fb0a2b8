"""From a config to its task object (through the family registry, grokking/families.py), and the task's
sizes to the model config: building a task changes no config, the caller applies `sized`."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
from dataclasses import dataclass

from grokking.config import RunConfig, TaskConfig
from grokking.errors import UserError
from grokking.families import TASK_NAMES, family_of
from grokking.tasks import digit_addition
from grokking.tasks.icl_functions import ICLTask
from grokking.tasks.lm_data import Encoded, Example, LMTask, encode
from grokking.tasks.modular import ModularTask


@dataclass
class LMRunData:
    """A language task's splits as one run uses them: encoded training data and fixed evaluation subsets.

    `eval_sets` holds the first `eval_examples` lines of each split, so every evaluation scores the
    same sentences and curves are comparable across steps. `val` is the in-distribution dev split,
    `test` the in-distribution test split (dev again for Dyck, which has none), `gen` the held-out
    structures. Every evaluation takes the LM loss on `train` and `test` and scores `scored_splits`
    with the task's own metric (digit addition scores `train` and `test`: it has no val or gen split).
    """

    lm_task: LMTask
    train_examples: list[Example]  # after the max_len filter
    train: Encoded
    eval_sets: dict[str, list[Example]]
    scored_splits: tuple[str, ...] = ("val", "gen")

    @property
    def task(self) -> LMTask:
        """`lm_task` under the name notebooks use (`run.task.task.vocab`)."""
        return self.lm_task

    @property
    def d_vocab(self) -> int:
        return len(self.lm_task.vocab)

    @property
    def d_vocab_out(self) -> int:
        return len(self.lm_task.vocab)

    @property
    def n_ctx(self) -> int:
        lengths = [len(ex.words) + 2 for examples in self.eval_sets.values() for ex in examples]
        return max([self.train.tokens.shape[1], *lengths])


Task = ModularTask | LMRunData | ICLTask


def languages() -> tuple[str, ...]:
    """The synthetic languages: the tasks whose family builds its data with `build_lm_data`."""
    return tuple(t for t in TASK_NAMES if family_of(t).build == f"{__name__}:build_lm_data")


def get_lm_task(name: str, mix: str = "published") -> LMTask:
    """The synthetic language `name` (its `TASK`, defined in grokking/tasks/<name>.py); `mix` picks the
    structure mix where the module has several (`TASKS`: QF, TI; Dyck has one)."""
    if name not in languages():
        close = difflib.get_close_matches(name, languages(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; choose one of {', '.join(languages())}"
        raise UserError(f"unknown LM task '{name}'{hint}")
    module = importlib.import_module(f"grokking.tasks.{name.replace('-', '_')}")
    return getattr(module, "TASKS", {}).get(mix, module.TASK)


def build_lm_data(t: TaskConfig) -> LMRunData:
    lm_task = get_lm_task(t.task, t.mix)
    splits = lm_task.splits(t.data_dir or None, seed=t.data_seed)
    train = [ex for ex in splits["train"] if not t.max_len or len(ex.words) + 2 <= t.max_len]
    if not train:
        raise UserError(f"no training sequence of {t.task} is at most max_len={t.max_len} tokens; raise max_len")
    n = t.eval_examples
    test_split = "test" if "test" in splits else "dev"
    eval_sets = {"train": train[:n], "test": splits[test_split][:n], "val": splits["dev"][:n], "gen": splits["gen"][:n]}
    if t.max_len:
        eval_sets = {k: [ex for ex in v if len(ex.words) + 2 <= t.max_len] for k, v in eval_sets.items()}
    return LMRunData(lm_task, train, encode(train, lm_task.vocab), eval_sets)


def build_digit_addition_data(t: TaskConfig) -> LMRunData:
    """n-digit addition: `n_train` training pairs and a disjoint test set of `eval_examples` pairs."""
    lm_task = digit_addition.make_task(t.n_digits, t.n_train, t.eval_examples)
    splits = lm_task.generate(t.data_seed)
    train = splits["train"]
    eval_sets = {"train": train[: t.eval_examples], "test": splits["test"]}
    return LMRunData(lm_task, train, encode(train, lm_task.vocab), eval_sets, scored_splits=("train", "test"))


def build_task(cfg: RunConfig) -> Task:
    """The task of a config, built by its family. `cfg` is left as it is: `sized(cfg, task)` gives the config
    whose model has the task's vocabulary and context sizes."""
    return family_of(cfg.task.task).resolve("build")(cfg.task)


def sized(cfg: RunConfig, task: Task) -> RunConfig:
    """A copy of `cfg` whose model has `task`'s `d_vocab`, `d_vocab_out` and `n_ctx`: the config a model is
    built from and config.json records, so a checkpoint is self-describing."""
    out = copy.deepcopy(cfg)
    out.model = dataclasses.replace(cfg.model, d_vocab=task.d_vocab, d_vocab_out=task.d_vocab_out, n_ctx=task.n_ctx)
    return out
