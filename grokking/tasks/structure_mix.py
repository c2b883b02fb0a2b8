"""Structure mixes of question-formation and tense-inflection data: classify, fit, draw, compare.

Why: McCoy et al.'s published files were not drawn by the grammar's rule weights, and their mix of
sentence structures is far from it (`published_mix.py`). To match them, a generator draws *templates*
(a published cell refined by the kind of each relative clause, which fixes the sentence's length) in
fixed counts per split. The template weights are the ones nearest the grammar's (uniform inside a
cell: intransitive and transitive subject-gap clauses have equal rule weight in `question.gr` and
`tense.gr`) that reproduce both published marginals, the cells and the words per declarative (iterative proportional fitting). Each
template's lines are enumerated as *frames* (one word tuple per slot), so a line is an integer index
and distinct indices are distinct lines: uniqueness within and across splits comes without redraws.
The same classifier reads any published-format file, which is what `grokking data --stats` prints.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from grokking.errors import UserError
from grokking.tasks.lm_data import LMTask, numbered_examples
from grokking.tasks.published_mix import CELLS, REFERENCE, WORDS, Cell

# Fine modifier kinds of a noun phrase; `coarse` drops the `/...` refinement to get the published cell.
MODIFIERS = ("none", "PP", "RC-subj-gap/intr", "RC-subj-gap/trans", "RC-obj-gap")
AFTER_VERB = ("intransitive", *MODIFIERS)

Slot = tuple[str, ...]
Frame = tuple[Slot, ...]


def coarse(kind: str) -> str:
    return kind.split("/")[0]


@dataclass(frozen=True, order=True)
class Template:
    """Subject modifier, what follows the main verb (`intransitive` or the object's modifier), marker."""

    subject: str
    after: str
    marker: str

    @property
    def cell(self) -> Cell:
        return coarse(self.subject), coarse(self.after), self.marker


def templates(markers: Sequence[str]) -> list[Template]:
    return [Template(s, a, m) for s in MODIFIERS for a in AFTER_VERB for m in markers]


# ---- reading a sentence's structure ----------------------------------------------------------------------

_KINDS = {"": "none", "PDN": "PP", "RI": "RC-subj-gap/intr", "RTDN": "RC-subj-gap/trans", "RDNT": "RC-obj-gap"}


def classify(words: Sequence[str], tags: Mapping[str, str], aux: bool) -> tuple[str, str]:
    """(subject modifier, after the verb) of a declarative without `.`, from its part-of-speech letters.

    Tags: D determiner, N noun, P preposition, R relative pronoun, A auxiliary, I intransitive verb,
    T transitive verb. `aux`: question formation has auxiliaries before each verb, tense inflection none.
    Raises ValueError when the words are not a sentence of the grammar's shape.
    """
    tagged = "".join(tags.get(w, "?") for w in words)
    a = "A" if aux else ""
    modifier = f"(PDN|R{a}I|R{a}TDN|RDN{a}T)?"
    match = re.fullmatch(f"DN{modifier}{a}(?:(I)|TDN{modifier})", tagged)
    if match is None:
        raise ValueError(f"not a sentence of this grammar: {' '.join(words)!r}")
    subject, intransitive, obj = (g.replace("A", "") if g else "" for g in match.groups())
    return _KINDS[subject], "intransitive" if intransitive else _KINDS[obj]


# ---- fitting template weights to a published table ------------------------------------------------------


def _normalised(shares: Mapping) -> dict:
    total = sum(shares.values())
    return {k: v / total for k, v in shares.items() if v > 0}


def fit(lengths: Mapping[Template, int], cells: Mapping[Cell, float], words: Mapping[int, float],
        iterations: int = 300) -> dict[Template, float]:  # fmt: skip
    """Template weights (summing to 1) whose cell and length marginals match the tables.

    Iterative proportional fitting from uniform weights on the templates whose cell the table has;
    the tables are rounded, so the two marginals may not be matched exactly at once (a few 0.001).
    """
    cell_target, word_target = _normalised(cells), _normalised(words)
    weights = {t: 1.0 for t in lengths if t.cell in cell_target}
    for _ in range(iterations):
        for key, target in ((lambda t: t.cell, cell_target), (lambda t: lengths[t], word_target)):
            sums: Counter = Counter()
            for t, w in weights.items():
                sums[key(t)] += w
            weights = {t: w * target.get(key(t), 0.0) / sums[key(t)] if sums[key(t)] else 0.0 for t, w in weights.items()}
    return _normalised(weights)


def allocate(weights: Mapping[Template, float], n: int, caps: Mapping[Template, int]) -> dict[Template, int]:
    """`n` lines split by `weights` (largest remainder), never more than `caps[t]` for a template; what a
    full template cannot take goes to the others in proportion to their weights."""
    counts: dict[Template, int] = {}
    free = {t: w for t, w in weights.items() if w > 0}
    while True:
        left = n - sum(counts.values())
        total = sum(free.values())
        if not free or total <= 0:
            raise ValueError(f"cannot place {left} more lines: every template of this mix is exhausted")
        exact = {t: left * w / total for t, w in free.items()}
        share = {t: math.floor(x) for t, x in exact.items()}
        for t in sorted(free, key=lambda t: (share[t] - exact[t], t))[: left - sum(share.values())]:
            share[t] += 1
        full = {t for t in free if share[t] > caps[t]}
        if not full:
            return counts | share
        for t in full:
            counts[t] = caps[t]
            del free[t]


# ---- drawing lines --------------------------------------------------------------------------------------


class Frames:
    """Every line of one template under one split rule, as frames: line `i` is decoded in mixed radix."""

    def __init__(self, frames: Sequence[Frame]) -> None:
        self.frames = list(dict.fromkeys(frames))  # a variable a template does not use repeats frames
        self.ends = list(itertools.accumulate(math.prod(map(len, f)) for f in self.frames))

    @property
    def capacity(self) -> int:
        return self.ends[-1] if self.ends else 0

    @property
    def length(self) -> int:
        return len(self.frames[0])

    def words(self, index: int) -> list[str]:
        k = bisect.bisect_right(self.ends, index)
        index -= self.ends[k - 1] if k else 0
        out = []
        for slot in reversed(self.frames[k]):
            index, j = divmod(index, len(slot))
            out.append(slot[j])
        return out[::-1]


Space = Mapping[Template, Frames]  # the lines a split rule allows, per template


def draw(rng: random.Random, sizes: Mapping[str, int], rules: Mapping[str, str], spaces: Mapping[str, Space],
         weights: Mapping[str, Mapping[Template, float]]) -> dict[str, list[tuple[Template, list[str]]]]:  # fmt: skip
    """Lines for every split: `spaces[rules[split]]` holds the lines its split rule allows, `weights[split]`
    its mix.

    Held-out splits take their exact counts first; train takes what each template has left (the
    shortest templates run out, as in the published files). Each template's lines are a uniform
    sample without replacement over its frames, so no line repeats within or across splits.
    """
    order = sorted(sizes, key=lambda s: s == "train")  # held-out first, train last
    used: Counter = Counter()
    counts: dict[str, dict[Template, int]] = {}
    for split in order:
        space = spaces[rules[split]]
        caps = {t: space[t].capacity - used[rules[split], t] for t in weights[split]}
        counts[split] = allocate(weights[split], sizes[split], caps)
        for t, k in counts[split].items():
            used[rules[split], t] += k
    out: dict[str, list[tuple[Template, list[str]]]] = {s: [] for s in sizes}
    for rule in dict.fromkeys(rules[s] for s in order):
        for t in sorted(spaces[rule]):
            users = [s for s in order if rules[s] == rule and counts[s].get(t)]
            if not users:
                continue
            frames = spaces[rule][t]
            indices = rng.sample(range(frames.capacity), sum(counts[s][t] for s in users))
            for s in users:
                take, indices = indices[: counts[s][t]], indices[counts[s][t] :]
                out[s].extend((t, frames.words(i)) for i in take)
    for split in sizes:
        rng.shuffle(out[split])
    return out


def published_weights(stem: str, space: Space, split: str) -> dict[Template, float]:
    """The fitted template weights of `split` against its published table (`REFERENCE`)."""
    name = f"{stem}.{REFERENCE[split]}"
    lengths = {t: f.length for t, f in space.items() if f.capacity}
    return fit(lengths, CELLS[name], WORDS[name])


def draw_published(
    task: str, stem: str, seed: int, sizes: Mapping[str, int], spaces: Mapping[str, Space]
) -> dict[str, list[tuple[Template, list[str]]]]:
    """`draw` at the published mix: gen under the gen rule, every other split under the in-distribution
    rule, each split weighted against its published table `stem`.SPLIT, seeded by task and seed."""
    rules = {s: "gen" if s == "gen" else "in" for s in sizes}
    weights = {s: published_weights(stem, spaces[rules[s]], s) for s in sizes}
    return draw(random.Random(f"{task}:published:{seed}"), sizes, rules, spaces, weights)


# ---- comparing a data set with the published mix --------------------------------------------------------


def tvd(p: Mapping, q: Mapping) -> float:
    """Total variation distance between two count or share tables (each normalised first)."""
    p, q = _normalised(p), _normalised(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in p.keys() | q.keys())


@dataclass
class Mix:
    """Counts of cells and of words per declarative in one file."""

    cells: Counter
    words: Counter

    @property
    def n(self) -> int:
        return sum(self.cells.values())


def mix_of(lines: Sequence[tuple[Cell, int]]) -> Mix:
    return Mix(Counter(c for c, _ in lines), Counter(n for _, n in lines))


def sampling_noise(shares: Mapping, n: int) -> float:
    """Expected TVD of `n` lines drawn i.i.d. from `shares` (normal approximation of each cell's count)."""
    return 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * n)) for p in _normalised(shares).values())


def compare(stem: str, mixes: Mapping[str, Mix]) -> list[str]:
    """Lines of text: each split's TVD against its published reference (`REFERENCE`), then the cell and
    words-per-declarative shares of every split next to the published ones, in percent."""
    refs = {split: f"{stem}.{REFERENCE.get(split, 'test')}" for split in mixes}
    columns = {**{split: (_normalised(m.cells), _normalised(m.words)) for split, m in mixes.items()},
               **{f"pub.{name.split('.')[1]}": (_normalised(CELLS[name]), _normalised(WORDS[name]))
                  for name in dict.fromkeys(refs.values())}}  # fmt: skip
    out = [f"{'split':<6} {'lines':>7}  {'published':<14} {'TVD cells':>9} {'TVD words':>9}   i.i.d. noise at this size (cells, words)"]
    for split, m in mixes.items():
        ref_cells, ref_words = columns[f"pub.{refs[split].split('.')[1]}"]
        out.append(
            f"{split:<6} {m.n:>7}  {refs[split]:<14} {tvd(columns[split][0], ref_cells):>9.3f} "
            f"{tvd(columns[split][1], ref_words):>9.3f}   {sampling_noise(ref_cells, m.n):.3f}, {sampling_noise(ref_words, m.n):.3f}"
        )
    header = "".join(f"{c:>9}" for c in columns)
    out += ["", f"{'subject modifier':<17} {'after the verb':<14} {'marker':<8}{header}"]
    for cell in sorted({c for cells, _ in columns.values() for c in cells}):
        out.append(f"{cell[0]:<17} {cell[1]:<14} {cell[2]:<8}" + "".join(f"{100 * cells.get(cell, 0):9.1f}" for cells, _ in columns.values()))
    out += ["", f"{'words per declarative':<41}{header}"]
    for n in sorted({n for _, words in columns.values() for n in words}):
        out.append(f"{n:<41}" + "".join(f"{100 * words.get(n, 0):9.1f}" for _, words in columns.values()))
    return out


def file_mix(task: LMTask, path: Path) -> Mix:
    """The mix of one published-format file; a line that is not of the task's shape names file and line."""
    assert task.structure is not None, "only tasks with structure cells have a mix"
    lines = []
    for lineno, example in numbered_examples(path, task.vocab, task.paired):
        try:
            lines.append(task.structure(example))
        except ValueError as exc:
            raise UserError(f"{path}:{lineno}: {exc}") from None
    return mix_of(lines)


def stats_report(task: LMTask, directory: Path) -> list[str]:
    """Every `<stem>.<split>` file in `directory` (any source) next to the published mix, with TVDs."""
    if not directory.is_dir():
        raise UserError(f"{directory}: no such directory")
    paths = [directory / f"{task.file_stem}.{s}" for s in task.split_names]
    found = [p for p in paths if p.is_file()]
    if not found:
        raise UserError(f"{directory}: none of {', '.join(p.name for p in paths)} is there")
    return compare(task.file_stem, {path.suffix[1:]: file_mix(task, path) for path in found})
