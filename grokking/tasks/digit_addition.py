"""Digit addition (`digit-addition`): n-digit + n-digit as a causal-LM task, for the metric-choice lens.

With n = 2, 47 + 35 = 82 is the sequence `<sos> 4 7 + 3 5 = 2 8 0 <eos>`:
- operands most-significant digit first, zero-padded to n digits (`0 7` for 7), drawn uniformly from
  0 .. 10^n - 1 each, so every (a, b) pair is one possible example;
- the answer has a fixed n + 1 digits (a leading zero where there is no final carry) written
  *least*-significant first. Reversed, each answer digit depends only on the operand digits at its
  place and the carry of the digit just emitted, which a small causal transformer can learn left to
  right; most-significant first needs every carry before the first token. The fixed length L = n + 1
  makes exact match (~ p^L) and edit distance (~ L(1 - p)) compare on equal footing, as in Schaeffer
  et al.'s 4-digit + 4-digit addition, and gives every sequence the same length.

Vocabulary: `<pad>` 0, `<sos>` 1, `<eos>` 2, then `+`, the digits `0`..`9`, `=` (the shared `Vocab`).

Trained like the other language tasks (`grokking train addition-cpu`; config keys `n_digits`, `n_train`, and
`eval_examples` test pairs); every evaluation row scores the train and test splits with `evaluate`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from grokking.analysis.metrics import metric_table, prefix_metrics
from grokking.tasks.lm_data import Example, LMTask, LogitsFn, Vocab, draw_unique, encode, greedy_decode

DIGITS = tuple("0123456789")
VOCAB = Vocab([*DIGITS, "+", "="])


def _digits(value: int, width: int) -> list[str]:
    return list(str(value).zfill(width))


def make_example(a: int, b: int, n_digits: int) -> Example:
    """`a + b` as input `a + b =` and target the n + 1 digits of the sum, least significant first."""
    if not (0 <= a < 10**n_digits and 0 <= b < 10**n_digits):
        raise ValueError(f"operands {a}, {b} do not fit in {n_digits} digits")
    question = [*_digits(a, n_digits), "+", *_digits(b, n_digits), "="]
    return Example(" ".join(question), " ".join(reversed(_digits(a + b, n_digits + 1))))


def generate(n_digits: int, seed: int, n_train: int, n_test: int) -> dict[str, list[Example]]:
    """Train and test splits for `seed`: distinct (a, b) pairs, none shared between the splits.

    Test is drawn first, so it depends on (n_digits, seed, n_test) only: the same test set for every
    training-set size, and larger training sets for a seed extend smaller ones.
    """
    n_pairs = 10 ** (2 * n_digits)
    if n_digits < 1 or n_train < 0 or n_test < 0 or n_train + n_test > n_pairs:
        raise ValueError(f"cannot draw {n_train} + {n_test} distinct {n_digits}-digit additions (there are {n_pairs})")
    rng = random.Random(f"digit-addition:{n_digits}:{seed}")

    def draw() -> Example:
        return make_example(*divmod(rng.randrange(n_pairs), 10**n_digits), n_digits)

    seen: set[str] = set()
    test = draw_unique(draw, n_test, seen)
    return {"train": draw_unique(draw, n_train, seen), "test": test}


# ---- scoring --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdditionScore:
    """Per-example greedy answers (space-separated tokens, in target order) and `metric_table` numbers."""

    predictions: list[str]
    metrics: dict[str, float]


@torch.no_grad()
def answer_logits(logits_fn: LogitsFn, examples: Sequence[Example], vocab: Vocab = VOCAB, batch_size: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forced logits [N, T-1, V], the tokens they predict [N, T-1] and the answer-digit mask.

    Position t of the outputs predicts token t + 1; the mask covers the target digits, not `<eos>`.
    """
    enc = encode(examples, vocab)
    logits = torch.cat([logits_fn(enc.tokens[s : s + batch_size]) for s in range(0, len(examples), batch_size)])
    predicted = torch.arange(1, enc.tokens.shape[1])  # token index each output position predicts
    start = enc.target_start[:, None]
    lengths = torch.tensor([len(ex.target.split()) for ex in examples])[:, None]
    mask = (predicted >= start) & (predicted < start + lengths)
    return logits[:, :-1].float(), enc.tokens[:, 1:], mask


def score(logits_fn: LogitsFn, examples: Sequence[Example], vocab: Vocab = VOCAB, batch_size: int = 256) -> AdditionScore:
    """Greedy-decode every answer (stopping at `<eos>` or one token past the target's length, so extra
    tokens count against edit distance) and score the same model under every metric of `metric_table`,
    plus exact match and edit distance of each answer prefix (`prefix_metrics`, the target-length lens);
    log-likelihood and Brier are teacher-forced at the answer digits."""
    if not examples:
        raise ValueError("no examples to score")
    prefixes = [[vocab.sos_id, *vocab.encode(ex.input.split())] for ex in examples]
    max_new = [len(ex.target.split()) + 1 for ex in examples]
    decoded = greedy_decode(logits_fn, prefixes, max_new, vocab.eos_id, batch_size)
    logits, targets, mask = answer_logits(logits_fn, examples, vocab, batch_size)
    predictions = [" ".join(vocab.decode(ids)) for ids in decoded]
    gold = [vocab.encode(ex.target.split()) for ex in examples]
    lengths = range(1, max(map(len, gold)) + 1)
    return AdditionScore(predictions, metric_table(decoded, logits, targets, mask) | prefix_metrics(decoded, gold, lengths))


def evaluate(logits_fn: LogitsFn, examples: Sequence[Example], vocab: Vocab = VOCAB, batch_size: int = 256) -> dict[str, float]:
    """An evaluation row's part for these examples: `acc` (exact match, the headline) and every lens metric,
    so the lens over training time and over scale can be read from metrics.csv alone."""
    metrics = score(logits_fn, examples, vocab, batch_size).metrics
    return {"acc": metrics["exact_match"], **metrics}


def make_task(n_digits: int, n_train: int, n_test: int) -> LMTask:
    """The task as training sees it. Generated in memory on every build (10k examples take ~0.2 s), so
    unlike the synthetic languages it has no on-disk cache."""
    return LMTask(
        name="digit-addition",
        file_stem="addition",
        split_names=("train", "test"),
        vocab=VOCAB,
        params={"n_digits": n_digits, "n_train": n_train, "n_test": n_test},
        generate=lambda seed: generate(n_digits, seed, n_train, n_test),
        score=evaluate,
    )
