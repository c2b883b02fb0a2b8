"""From a config to its task object; the one place that knows every task family."""

from __future__ import annotations

from dataclasses import dataclass

from grokking.config import DIGIT_ADDITION, ICL_FUNCTIONS, LM_TASK_NAMES, RunConfig
from grokking.errors import UserError
from grokking.tasks import digit_addition, icl_functions
from grokking.tasks.lm_data import Encoded, Example, LMTask, encode, get_lm_task
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

    task: LMTask
    train_examples: list[Example]  # after the max_len filter
    train: Encoded
    eval_sets: dict[str, list[Example]]
    scored_splits: tuple[str, ...] = ("val", "gen")

    @property
    def d_vocab(self) -> int:
        return len(self.task.vocab)

    @property
    def d_vocab_out(self) -> int:
        return len(self.task.vocab)

    @property
    def n_ctx(self) -> int:
        lengths = [len(ex.words) + 2 for examples in self.eval_sets.values() for ex in examples]
        return max([self.train.tokens.shape[1], *lengths])


def build_lm_data(cfg: RunConfig) -> LMRunData:
    t = cfg.task
    task = get_lm_task(t.task, t.mix)
    splits = task.splits(t.data_dir or None, seed=t.data_seed)
    train = [ex for ex in splits["train"] if not t.max_len or len(ex.words) + 2 <= t.max_len]
    if not train:
        raise UserError(f"no training sequence of {t.task} is at most max_len={t.max_len} tokens; raise max_len")
    n = t.eval_examples
    test_split = "test" if "test" in splits else "dev"
    eval_sets = {"train": train[:n], "test": splits[test_split][:n], "val": splits["dev"][:n], "gen": splits["gen"][:n]}
    if t.max_len:
        eval_sets = {k: [ex for ex in v if len(ex.words) + 2 <= t.max_len] for k, v in eval_sets.items()}
    return LMRunData(task, train, encode(train, task.vocab), eval_sets)


def build_digit_addition_data(cfg: RunConfig) -> LMRunData:
    """n-digit addition: `n_train` training pairs and a disjoint test set of `eval_examples` pairs."""
    t = cfg.task
    task = digit_addition.make_task(t.n_digits, t.n_train, t.eval_examples)
    splits = task.generate(t.data_seed)
    train = splits["train"]
    eval_sets = {"train": train[: t.eval_examples], "test": splits["test"]}
    return LMRunData(task, train, encode(train, task.vocab), eval_sets, scored_splits=("train", "test"))


def build_task(cfg: RunConfig) -> ModularTask | LMRunData | icl_functions.ICLTask:
    """The task of a config; fills the model's vocabulary and context sizes from it."""
    if cfg.task.task == "modular":
        task: ModularTask | LMRunData | icl_functions.ICLTask = ModularTask.from_config(cfg.task)
    elif cfg.task.task in LM_TASK_NAMES:
        task = build_lm_data(cfg)
    elif cfg.task.task == DIGIT_ADDITION:
        task = build_digit_addition_data(cfg)
    elif cfg.task.task == ICL_FUNCTIONS:
        task = icl_functions.from_config(cfg.task)
    else:
        raise UserError(f"unknown task '{cfg.task.task}'; choose 'modular', {', '.join(LM_TASK_NAMES)} or {DIGIT_ADDITION}")
    cfg.model.d_vocab, cfg.model.d_vocab_out, cfg.model.n_ctx = task.d_vocab, task.d_vocab_out, task.n_ctx
    return task
