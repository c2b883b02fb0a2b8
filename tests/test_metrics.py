"""The metric-choice lens on hand-made outputs with known values, and the digit-addition task."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import pytest
import torch

from grokking.analysis import metrics as m
from grokking.config import preset_config
from grokking.errors import UserError
from grokking.tasks import digit_addition as da
from grokking.tasks.lm_data import Example, encode
from grokking.tasks.registry import build_task

# ---- string metrics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "target", "distance"),
    [
        ([], [1, 2, 3], 3),  # empty output: every target token inserted
        ([1, 2, 3], [], 3),
        ([1, 2, 3, 4, 5], [1, 2, 3], 2),  # extra tokens: each one deleted
        ([1, 9, 3], [1, 2, 3], 1),  # substitution
        ([2, 3], [1, 2, 3], 1),  # a dropped first token is one edit, though every position shifted
        (list("kitten"), list("sitting"), 3),
        ([], [], 0),
    ],
)
def test_token_edit_distance(pred: list, target: list, distance: int) -> None:
    assert m.token_edit_distance(pred, target) == distance
    if not any(isinstance(tok, str) for tok in pred + target):  # 1-D id tensors work the same
        as_tensor = torch.tensor(pred, dtype=torch.long), torch.tensor(target, dtype=torch.long)
        assert m.token_edit_distance(*as_tensor) == distance


def test_exact_match_and_per_token_accuracy_disagree_on_a_long_target() -> None:
    target = [3, 1, 4, 1, 5]
    nearly = [3, 1, 4, 1, 9]
    assert not m.exact_match(nearly, target)
    assert m.per_token_accuracy(nearly, target) == pytest.approx(0.8)
    assert m.token_edit_distance(nearly, target) == 1
    assert m.exact_match(target, target) and m.per_token_accuracy(target, target) == 1.0
    assert not m.exact_match([*target, 7], target)  # extra tokens break exact match ...
    assert m.per_token_accuracy([*target, 7], target) == 1.0  # ... not per-token accuracy ...
    assert m.token_edit_distance([*target, 7], target) == 1  # ... which edit distance catches
    assert m.per_token_accuracy([3, 1], target) == pytest.approx(0.4)  # missing tokens are wrong

    preds, targets = [nearly, target, []], [target, target, target]
    assert m.mean_exact_match(preds, targets) == pytest.approx(1 / 3)
    assert m.mean_per_token_accuracy(preds, targets) == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert m.mean_token_edit_distance(preds, targets) == pytest.approx((1 + 0 + 5) / 3)
    assert math.isnan(m.mean_exact_match([], []))
    with pytest.raises(ValueError):
        m.mean_exact_match(preds, targets[:2])
    with pytest.raises(ValueError):
        m.per_token_accuracy([1], [])


# ---- probabilistic metrics --------------------------------------------------------------------------------


def test_brier_score() -> None:
    labels = torch.tensor([0, 2, 1])
    assert m.brier_score(torch.eye(3)[labels], labels) == 0.0
    assert m.brier_score(torch.full((3, 4), 0.25), labels) == pytest.approx(0.75)  # 1 - 1/C
    assert m.brier_score(torch.eye(3)[[1, 0, 2]], labels) == pytest.approx(2.0)  # confident and wrong
    # (0.7 - 1)^2 + 0.2^2 + 0.1^2 = 0.14
    assert m.brier_score(torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([0])) == pytest.approx(0.14)
    p = torch.tensor([0.9, 0.2, 0.5])
    outcomes = torch.tensor([True, False, True])
    assert m.binary_brier_score(p, outcomes) == pytest.approx((0.01 + 0.04 + 0.25) / 3)
    two_class = torch.stack([1 - p, p], -1)
    assert m.brier_score(two_class, outcomes.long()) == pytest.approx(2 * m.binary_brier_score(p, outcomes))


def test_target_log_likelihood() -> None:
    logits = torch.full((1, 3, 4), -20.0)
    logits[0, torch.arange(3), torch.tensor([1, 2, 3])] = 20.0  # one-hot-ish on the targets
    targets = torch.tensor([[1, 2, 0]])
    mask = torch.tensor([[True, True, False]])  # the wrong third position is masked out
    assert m.target_log_likelihood(logits, targets, mask) == pytest.approx(0.0, abs=1e-12)
    everywhere, nowhere = torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool)
    assert m.target_log_likelihood(logits, targets, everywhere) == pytest.approx(-40 / 3, rel=1e-6)  # log p ~ -40 once
    uniform = m.target_log_likelihood(torch.zeros(2, 3, 4), targets.expand(2, 3), mask.expand(2, 3))
    assert uniform == pytest.approx(-math.log(4))
    assert math.isnan(m.target_log_likelihood(logits, targets, nowhere))


# ---- subset accuracy and emergence score -------------------------------------------------------------------


def test_subset_accuracy_is_the_unbiased_all_k_right_estimate() -> None:
    correct = torch.tensor([True, True, True, False])  # c = 3 of N = 4
    expected = {1: 0.75, 2: 0.5, 3: 0.25, 4: 0.0, 5: math.nan}
    assert m.subset_accuracies(correct) == pytest.approx(expected, nan_ok=True)
    # C(c, K) / C(N, K) is the mean over every K-subset of "all right": check by brute force.
    correct = torch.tensor([True, False, True, True, True, False, True])
    for k in range(1, 6):
        subsets = torch.tensor(list(itertools.combinations(range(len(correct)), k)))
        assert m.subset_accuracy(correct, k) == pytest.approx(correct[subsets].all(-1).float().mean().item())
    assert m.subset_accuracies(torch.ones(5, dtype=torch.bool)) == {k: 1.0 for k in range(1, 6)}
    with pytest.raises(ValueError):
        m.subset_accuracy(correct, 0)


def test_emergence_score() -> None:
    # By hand: diffs 0.1, 0.2, 0.7 -> squares 0.01, 0.04, 0.49, median 0.04 -> 1.0 / 0.2 = 5.
    assert m.emergence_score([1, 2, 3, 4], [0.0, 0.1, 0.3, 1.0]) == pytest.approx(5.0)
    assert m.emergence_score([3, 1, 4, 2], [0.3, 0.0, 1.0, 0.1]) == pytest.approx(5.0)  # ordered by scale
    assert m.emergence_score([1, 2, 3, 4], [1.0, 0.3, 0.1, 0.0]) == pytest.approx(-5.0)  # gets worse
    scales = [10.0**i for i in range(8)]
    line = [i / 7 for i in range(8)]
    assert m.emergence_score(scales, line) == pytest.approx(7.0)  # n - 1 for a straight line
    noisy_step = [0.0, 0.01, 0.0, 0.02, 0.98, 1.0, 0.99, 1.0]
    assert m.emergence_score(scales, noisy_step) > 10 * m.emergence_score(scales, line)
    assert m.emergence_score(scales, [0.0] * 4 + [1.0] * 4) == math.inf  # zero median: a pure step
    assert m.emergence_score(scales, [0.5] * 8) == 0.0
    with pytest.raises(ValueError):
        m.emergence_score([1.0], [1.0])


def test_exact_match_is_emergent_where_edit_distance_is_not() -> None:
    """The mirage in miniature: p^L over scale breaks through, L(1 - p) does not."""
    scales = [10.0**i for i in range(8)]
    p = [math.exp(-((s / 1e3) ** -0.3)) for s in scales]  # per-token loss a power law in scale: 0 .. 0.94
    exact = [q**10 for q in p]
    edit = [-10 * (1 - q) for q in p]
    assert m.emergence_score(scales, exact) > 5 * m.emergence_score(scales, edit)  # about 80 vs 8


def test_metric_table() -> None:
    targets = torch.tensor([[5, 6, 7], [5, 6, 7]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    logits = torch.zeros(2, 3, 8)
    preds = [[5, 6], [5, 9, 9]]
    table = m.metric_table(preds, logits, targets, mask)
    assert list(table) == ["exact_match", "per_token_acc", "edit_distance", "log_likelihood", "brier",
                           *(f"subset_acc_k{k}" for k in range(1, 6))]  # fmt: skip
    assert table["exact_match"] == 0.5 == table["subset_acc_k1"]
    assert table["per_token_acc"] == 0.75
    assert table["edit_distance"] == 1.0
    assert table["log_likelihood"] == pytest.approx(-math.log(8))
    assert table["brier"] == pytest.approx(1 - 1 / 8)
    assert table["subset_acc_k2"] == 0.0 and math.isnan(table["subset_acc_k3"])


# ---- digit addition ------------------------------------------------------------------------------------------


def _value(digits: Sequence[str]) -> int:
    return int("".join(digits))


@pytest.mark.parametrize("n_digits", [1, 2, 4])
def test_digit_addition_data(n_digits: int) -> None:
    data = da.generate(n_digits, seed=3, n_train=90 if n_digits == 1 else 300, n_test=10 if n_digits == 1 else 100)
    for ex in data["train"] + data["test"]:
        words, answer = ex.input.split(), ex.target.split()
        assert words[n_digits] == "+" and words[-1] == "=" and len(words) == 2 * n_digits + 2
        assert len(answer) == n_digits + 1 and set(answer) <= set(da.DIGITS)
        a, b = _value(words[:n_digits]), _value(words[n_digits + 1 : -1])
        assert _value(answer[::-1]) == a + b  # least significant digit first
    train_inputs = [ex.input for ex in data["train"]]
    assert len(set(train_inputs)) == len(train_inputs)
    assert not set(train_inputs) & {ex.input for ex in data["test"]}
    assert da.generate(n_digits, seed=3, n_train=len(train_inputs), n_test=len(data["test"])) == data
    assert da.generate(n_digits, seed=4, n_train=len(train_inputs), n_test=len(data["test"])) != data


def test_digit_addition_splits_nest() -> None:
    small, large = da.generate(2, seed=0, n_train=50, n_test=20), da.generate(2, seed=0, n_train=200, n_test=20)
    assert small["test"] == large["test"] and large["train"][:50] == small["train"]
    assert da.make_example(47, 35, 2) == Example("4 7 + 3 5 =", "2 8 0")
    assert da.make_example(7, 5, 2) == Example("0 7 + 0 5 =", "2 1 0")
    with pytest.raises(ValueError):
        da.generate(1, seed=0, n_train=95, n_test=10)  # only 100 one-digit pairs


def _oracle(examples: Sequence[Example], corrupt_last: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A causal 'LM' that looks up each row's example by its question and puts a large logit on the true
    next token (with `corrupt_last`, on the wrong digit 9 - d for the last answer digit d)."""
    sequences = encode(examples, da.VOCAB).tokens
    question_len = 1 + len(examples[0].input.split())  # `<sos>` and the question
    if corrupt_last:
        last = question_len + len(examples[0].target.split()) - 1
        sequences[:, last] = da.VOCAB.index["0"] + da.VOCAB.index["9"] - sequences[:, last]
    by_question = {tuple(row[:question_len]): row for row in sequences.tolist()}

    def logits_fn(batch: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*batch.shape, len(da.VOCAB))
        for b, row in enumerate(batch.tolist()):
            full = by_question[tuple(row[:question_len])]
            for t in range(min(len(row), len(full) - 1)):
                out[b, t, full[t + 1]] = 20.0
        return out

    return logits_fn


def test_digit_addition_scorer_with_an_oracle() -> None:
    examples = da.generate(3, seed=1, n_train=0, n_test=40)["test"]
    perfect = da.score(_oracle(examples), examples, batch_size=16)
    assert perfect.predictions == [ex.target for ex in examples]
    assert perfect.metrics["exact_match"] == 1.0 == perfect.metrics["subset_acc_k5"]
    assert perfect.metrics["per_token_acc"] == 1.0
    assert perfect.metrics["edit_distance"] == 0.0
    assert perfect.metrics["log_likelihood"] > -1e-3 and perfect.metrics["brier"] < 1e-6

    # One wrong digit of four: exact match collapses, the continuous metrics barely move.
    off_by_one = da.score(_oracle(examples, corrupt_last=True), examples, batch_size=16)
    assert off_by_one.metrics["exact_match"] == 0.0
    assert off_by_one.metrics["per_token_acc"] == 0.75
    assert off_by_one.metrics["edit_distance"] == 1.0


# ---- target length, metric direction, the task's evaluation row ---------------------------------------------


def test_prefix_metrics_vary_target_length() -> None:
    targets = [[1, 2, 3, 4], [1, 2, 3, 4]]
    preds = [[1, 2, 9, 4], [1, 2, 3, 4, 7]]  # a wrong third token; a right answer with an extra token
    table = m.prefix_metrics(preds, targets, range(1, 5))
    assert [table[f"exact_match_L{n}"] for n in range(1, 5)] == [1.0, 1.0, 0.5, 0.5]
    assert [table[f"edit_distance_L{n}"] for n in range(1, 5)] == [0.0, 0.0, 0.5, 0.5]
    # Beyond the L-th token nothing counts: at full length only the extra token separates the two metrics.
    assert m.mean_exact_match(preds, targets) == 0.0 and m.mean_token_edit_distance(preds, targets) == 1.0
    short = m.prefix_metrics([[]], [[5, 6]], [1, 2])  # empty output: all L tokens missing
    assert short == {"exact_match_L1": 0.0, "edit_distance_L1": 1.0, "exact_match_L2": 0.0, "edit_distance_L2": 2.0}


def test_metric_direction_and_oriented_emergence_score() -> None:
    higher = ["test_exact_match", "per_token_acc", "test_log_likelihood", "test_acc", "subset_acc_k3", "excluded_loss", "test_exact_match_L2"]
    lower = ["test_edit_distance", "brier", "test_loss", "train_loss", "restricted_loss", "restricted_loss_k9", "test_edit_distance_L3"]
    assert [m.metric_direction(n) for n in higher] == [1] * len(higher)
    assert [m.metric_direction(n) for n in lower] == [-1] * len(lower)
    scales = [1, 2, 3, 4]
    falling_edit = [3.0, 2.9, 2.7, 0.0]  # improves sharply at the largest scale
    assert m.oriented_emergence_score(scales, falling_edit, "test_edit_distance") > 0
    assert m.oriented_emergence_score(scales, falling_edit, "test_edit_distance") == pytest.approx(-m.emergence_score(scales, falling_edit))


def test_digit_addition_evaluation_row() -> None:
    """What an evaluation of a digit-addition run writes for one split: `acc` and every lens metric."""
    examples = da.generate(2, seed=0, n_train=0, n_test=30)["test"]
    row = da.evaluate(_oracle(examples, corrupt_last=True), examples, batch_size=7)
    assert row["acc"] == row["exact_match"] == 0.0
    assert row["exact_match_L1"] == row["exact_match_L2"] == 1.0 and row["exact_match_L3"] == 0.0
    assert row["edit_distance_L3"] == row["edit_distance"] == 1.0
    assert {"per_token_acc", "log_likelihood", "brier", "subset_acc_k5"} <= set(row)


def test_progress_points() -> None:
    steps = [0, 10, 20, 30, 40, 50]
    assert m.progress_points(steps, [0.0, 0.0, 0.2, 0.6, 1.0, 1.0]) == [20.0, 30.0, 40.0]
    assert m.progress_points(steps[::-1], [1.0, 1.0, 0.6, 0.2, 0.0, 0.0]) == [20.0, 30.0, 40.0]  # ordered by x
    dip_then_rise = [-4.0, -16.0, -10.0, -2.0, -0.1, 0.0]  # a log-likelihood that first falls (memorisation)
    assert m.progress_points(steps, dip_then_rise, (0.5, 0.9)) == [30.0, 40.0]
    assert all(math.isnan(v) for v in m.progress_points(steps, [1.0, 0.5, 0.2, 0.1, 0.0, 0.0]))


def test_digit_addition_config() -> None:
    cfg = preset_config("addition-cpu")
    cfg.validate()
    assert (cfg.task.task, cfg.task.n_digits) == ("digit-addition", 3)
    data = build_task(cfg)
    assert len(data.train_examples) == cfg.task.n_train and len(data.eval_sets["test"]) == cfg.task.eval_examples
    assert not {ex.input for ex in data.train_examples} & {ex.input for ex in data.eval_sets["test"]}
    assert data.n_ctx == 2 * 3 + 2 + 4 + 2  # <sos> a + b = answer(n + 1) <eos>
    for key, value, message in [
        ("n_digits", "0", "n_digits must be in 1..9"),
        ("n_train", "0", "n_train must be >= 1"),
        ("n_train", "9900", "exceeds the 10000 distinct 2-digit pairs"),
    ]:
        bad = preset_config("addition-cpu")
        bad.set("n_digits", "2")
        bad.set(key, value)
        with pytest.raises(UserError, match=message):
            bad.validate()
