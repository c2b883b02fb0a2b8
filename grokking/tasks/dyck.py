"""Dyck-(k, m): balanced strings over k bracket types, nesting depth at most m (Murty et al. 2023).

Tokens follow the released code: `(a` opens type `a`, `a)` closes it; types are a..z, then aa..zz.
Sampling is their probabilistic automaton: with an empty stack stop (1/2) or open a uniformly chosen
type; otherwise open (1/2) or close the top (1/2); at depth m always close. Like the released code, a
stop is refused while the string is shorter than `min_len` (6: the published k-20/d-10 files contain
no shorter strings), so no string is empty or trivial.

A *segment* is the stretch between two returns to the empty stack; its structure is its open/close
pattern, e.g. `(()())`. As in the released code, dev strings use only segment structures seen in
training (and are not themselves training strings); gen strings contain at least one segment
structure never seen in training.
"""

from __future__ import annotations

import bisect
import itertools
import random
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from grokking.errors import UserError
from grokking.tasks.lm_data import Example, LMTask, LogitsFn, Vocab, length_batches, numbered_examples, pad

SIZES = {"train": 200_000, "dev": 20_000, "gen": 20_000}


def bracket_types(k: int) -> list[str]:
    """a..z, then aa..zz, aaa..: the released code's naming."""
    names = (c * reps for reps in itertools.count(1) for c in string.ascii_lowercase)
    return list(itertools.islice(names, k))


def openers(k: int) -> list[str]:
    return ["(" + t for t in bracket_types(k)]


def closers(k: int) -> list[str]:
    return [t + ")" for t in bracket_types(k)]


def sample(rng: random.Random, k: int, m: int, min_len: int) -> list[str]:
    """One string from the automaton. One uniform draw per token: below 1/2 it means stop (empty
    stack) or close, and the draw rescaled to [0, 1) picks the type of a new opener either way."""
    opens, closes = openers(k), closers(k)
    out: list[str] = []
    stack: list[int] = []
    while True:
        u = rng.random()
        if stack and (len(stack) == m or u < 0.5):
            out.append(closes[stack.pop()])
            continue
        if not stack and u < 0.5 and len(out) >= min_len:
            return out
        t = int((u if u < 0.5 else u - 0.5) * 2 * k)
        stack.append(t)
        out.append(opens[t])


def segments(words: Sequence[str]) -> list[str]:
    """Open/close pattern of each stretch between returns to the empty stack."""
    out, current, depth = [], [], 0
    for w in words:
        opening = w.startswith("(")
        current.append("(" if opening else ")")
        depth += 1 if opening else -1
        if depth == 0:
            out.append("".join(current))
            current = []
    return out


def is_balanced(words: Sequence[str], m: int) -> bool:
    """Well nested, every closer matches its opener, and depth never exceeds m."""
    stack: list[str] = []
    for w in words:
        if w.startswith("("):
            stack.append(w[1:])
            if len(stack) > m:
                return False
        elif not stack or stack.pop() != w[:-1]:
            return False
    return not stack


def generate(seed: int, k: int = 20, m: int = 10, sizes: dict[str, int] = SIZES, min_len: int = 6) -> dict[str, list[Example]]:
    """Train i.i.d. (repeats allowed); then draw until dev and gen are full, each string going to gen if
    it has an unseen segment structure, else to dev if it is not a training string. Held-out strings
    are unique."""
    rng = random.Random(f"dyck:{seed}")
    train = [" ".join(sample(rng, k, m, min_len)) for _ in range(sizes["train"])]
    seen_structures = {seg for s in train for seg in segments(s.split())}
    seen = set(train)
    dev: list[str] = []
    gen: list[str] = []
    while len(dev) < sizes["dev"] or len(gen) < sizes["gen"]:
        s = " ".join(sample(rng, k, m, min_len))
        if s in seen:
            continue
        novel = any(seg not in seen_structures for seg in segments(s.split()))
        bucket, cap = (gen, sizes["gen"]) if novel else (dev, sizes["dev"])
        if len(bucket) < cap:
            bucket.append(s)
            seen.add(s)
    return {name: [Example(s, "") for s in strings] for name, strings in (("train", train), ("dev", dev), ("gen", gen))}


# ---- scoring --------------------------------------------------------------------------------------------


def closing_pairs(words: Sequence[str]) -> list[tuple[int, int]]:
    """(closer index, its opener's index) for every closing bracket."""
    stack: list[int] = []
    pairs = []
    for i, w in enumerate(words):
        if w.startswith("("):
            stack.append(i)
        else:
            pairs.append((i, stack.pop()))
    return pairs


def dyck_closing_correct(pred_closer: str, words: Sequence[str], close_idx: int) -> bool:
    return pred_closer == words[close_idx]


@torch.no_grad()
def score(logits_fn: LogitsFn, examples: Sequence[Example], vocab: Vocab, batch_size: int = 256, min_distance: int = 10) -> dict[str, float]:
    """Teacher-forced: at every closing position, the argmax over closing brackets must be the right one.

    `acc` counts every closer (the released code); `acc_dist10` only those whose opener is at least
    `min_distance` tokens back (the paper). NaN when there is nothing to count.
    """
    closer_words = [w for w in vocab.tokens if w.endswith(")")]
    closer_ids = vocab.encode(closer_words)
    seqs = [[vocab.sos_id, *vocab.encode(ex.input.split())] for ex in examples]
    right = total = right_far = total_far = 0
    for rows in length_batches(seqs, batch_size):
        logits = logits_fn(pad([seqs[i] for i in rows]))[:, :, closer_ids]
        for b, i in enumerate(rows):
            words = examples[i].input.split()
            pairs = closing_pairs(words)
            if not pairs:
                continue
            # the token at string index c is sequence index c + 1, predicted by position c
            picks = logits[b, [c for c, _ in pairs]].argmax(-1).tolist()
            for (c, o), p in zip(pairs, picks):
                ok = dyck_closing_correct(closer_words[p], words, c)
                right, total = right + ok, total + 1
                if c - o >= min_distance:
                    right_far, total_far = right_far + ok, total_far + 1
    nan = float("nan")
    return {"acc": right / total if total else nan, "acc_dist10": right_far / total_far if total_far else nan}


# ---- statistics of a data directory ----------------------------------------------------------------------

LENGTH_BINS = (6, 11, 21, 41, 81, 161)  # lower edges of the length bins `stats_report` shows


def max_depth(words: Sequence[str]) -> int:
    depth = deepest = 0
    for w in words:
        depth += 1 if w.startswith("(") else -1
        deepest = max(deepest, depth)
    return deepest


def _profile(strings: Sequence[Sequence[str]]) -> dict[str, Counter]:
    return {
        "length": Counter(LENGTH_BINS[bisect.bisect_right(LENGTH_BINS, len(s)) - 1] for s in strings),
        "depth": Counter(max_depth(s) for s in strings),
    }


def stats_report(task: LMTask, directory: Path, n_reference: int = 20_000) -> list[str]:
    """Lengths, maximum depths and unseen segment structures of every `dyck.<split>` file in `directory`
    (any source), next to `n_reference` fresh strings of the automaton (the paper's sampling rule)."""
    from grokking.tasks.structure_mix import tvd

    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    paths = {s: directory / f"{task.file_stem}.{s}" for s in task.split_names if (directory / f"{task.file_stem}.{s}").is_file()}
    if not paths:
        raise UserError(f"{directory}: no {task.file_stem}.{{{','.join(task.split_names)}}} file is there")
    data = {}
    for split, path in paths.items():
        data[split] = []
        for lineno, ex in numbered_examples(path, task.vocab, paired=False):
            words = ex.input.split()
            if not is_balanced(words, int(task.params["m"])):
                raise UserError(f"{path}:{lineno}: not a balanced string of depth at most {task.params['m']}")
            data[split].append(words)
    rng = random.Random("dyck:reference")
    k, m, min_len = (int(task.params[key]) for key in ("k", "m", "min_len"))  # type: ignore[call-overload]
    columns = {split: _profile(strings) for split, strings in data.items()}
    columns["automaton"] = _profile([sample(rng, k, m, min_len) for _ in range(n_reference)])
    seen = {seg for s in data.get("train", []) for seg in segments(s)}
    train = {" ".join(s) for s in data.get("train", [])}
    out = [f"{'split':<6} {'strings':>8} {'mean len':>8} {'max len':>7} {'mean depth':>10} {'TVD len':>8} {'TVD depth':>9} "
           f"{'unseen structure':>16} {'in train':>8}"]  # fmt: skip

    def share(hits: int, n: int, known: bool) -> str:
        return f"{100 * hits / n:.1f}%" if known else "-"

    for split, strings in data.items():
        unseen = share(sum(any(seg not in seen for seg in segments(s)) for s in strings), len(strings), bool(seen))
        in_train = share(sum(" ".join(s) in train for s in strings), len(strings), bool(train) and split != "train")
        prof = columns[split]
        out.append(f"{split:<6} {len(strings):>8} {sum(map(len, strings)) / len(strings):>8.1f} {max(map(len, strings)):>7} "
                   f"{sum(map(max_depth, strings)) / len(strings):>10.2f} {tvd(prof['length'], columns['automaton']['length']):>8.3f} "
                   f"{tvd(prof['depth'], columns['automaton']['depth']):>9.3f} {unseen:>16} {in_train:>8}")  # fmt: skip
    header = "".join(f"{c:>10}" for c in columns)
    out += ["", f"{'length (shares in %)':<20}{header}"]
    for lo, hi in zip(LENGTH_BINS, (*LENGTH_BINS[1:], None)):
        label = f"{lo}-{hi - 1}" if hi else f"{lo}+"
        out.append(f"{label:<20}" + "".join(f"{100 * c['length'][lo] / c['length'].total():10.1f}" for c in columns.values()))
    out += ["", f"{'max depth':<20}{header}"]
    for d in range(1, m + 1):
        out.append(f"{d:<20}" + "".join(f"{100 * c['depth'][d] / c['depth'].total():10.1f}" for c in columns.values()))
    return out


def make_task(k: int = 20, m: int = 10, sizes: dict[str, int] = SIZES, min_len: int = 6) -> LMTask:
    return LMTask(
        name="dyck",
        file_stem="dyck",
        split_names=("train", "dev", "gen"),
        vocab=Vocab(openers(k) + closers(k)),
        params={"version": 1, "k": k, "m": m, "sizes": dict(sizes), "min_len": min_len},
        generate=lambda seed: generate(seed, k, m, sizes, min_len),
        score=score,
        paired=False,
    )


TASK = make_task()
