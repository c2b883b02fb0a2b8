"""Tense inflection (McCoy, Frank & Linzen 2020), as used by Murty et al. (2023) for structural grokking.

`the yaks that some unicorn entertained applauded her salamanders . PRESENT` ->
`the yaks that some unicorn entertains applaud her salamanders .`: every verb is put in the present
and agrees with its own subject. `PAST` lines are copied. In training, the main verb's subject and the
noun just before the verb always have the same number, so "agree with the most recent noun" fits the
data too; the generalisation set is exactly the sentences where the two rules disagree.

Split rules, as in the published files (McCoy et al.'s `tense.*`):
- train/dev/test: draw a sentence from the grammar and a marker (`PAST` or `PRESENT`, 1/2 each); a
  `PRESENT` whose subject and most recent noun differ in number is redrawn.
- gen: `PRESENT` lines whose subject and most recent noun differ in number (the published `tense.gen`
  has no `PAST` lines).

Two mixes of sentence structures (config key `mix`), as for question formation: `published` (default)
matches the published files' mix with every line unique; `grammar` samples by the rule weights.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import product

from grokking.tasks.grammar import GoldTree, Grammar, Sampler, Tree, gold_tree, parse, terminals
from grokking.tasks.lm_data import Example, LMTask, LogitsFn, Vocab, draw_unique, greedy_decode
from grokking.tasks.question_formation import DETS, NOUNS_PL, NOUNS_SG, PREPS, RELS, SIZES, VERBS_INTRANS, VERBS_TRANS
from grokking.tasks.structure_mix import Frames, Slot, Space, Template, classify, coarse, draw_published, templates

PAST_FORMS = dict(zip(
    VERBS_INTRANS + VERBS_TRANS,
    ("giggled", "smiled", "slept", "swam", "waited", "moved", "changed", "read", "ate",
     "entertained", "amused", "high_fived", "applauded", "confused", "admired", "accepted", "remembered", "comforted"),
))  # fmt: skip
PAST, PRESENT = "PAST", "PRESENT"
NUMBERS = ("sg", "pl")

VerbForm = Callable[[str, str], str]  # (base verb, "sg" | "pl") -> word


def present_form(base: str, number: str) -> str:
    return base + "s" if number == "sg" else base


def past_form(base: str, number: str) -> str:
    return PAST_FORMS[base]


def build_grammar(verb: VerbForm = present_form) -> Grammar:
    """McCoy et al.'s `tense.gr` (present tense); with `past_form`, the same sentences in the past."""

    def np(n: str) -> list[tuple[float, tuple[str, ...]]]:
        return [(1, ("Det", f"N_{n}")), (0.5, ("Det", f"N_{n}", "Prep", "Det", "N_sg")),
                (0.5, ("Det", f"N_{n}", "Prep", "Det", "N_pl")), (1, ("Det", f"N_{n}", f"RC_{n}"))]  # fmt: skip

    g: Grammar = {
        "ROOT": [(1, ("S", "."))],
        "S": [(1, (f"NP_M_{n}", f"VP_M_{n}")) for n in NUMBERS],
        "Det": [(1, (w,)) for w in DETS],
        "N_sg": [(1, (w,)) for w in NOUNS_SG],
        "N_pl": [(1, (w,)) for w in NOUNS_PL],
        "Prep": [(1, (w,)) for w in PREPS],
        "Rel": [(1, (w,)) for w in RELS],
    }
    for n in NUMBERS:
        g[f"NP_M_{n}"] = np(n)
        g[f"NP_O_{n}"] = np(n)
        g[f"VP_M_{n}"] = [(1, (f"V_intrans_{n}",)), (0.5, (f"V_trans_{n}", "NP_O_sg")), (0.5, (f"V_trans_{n}", "NP_O_pl"))]
        g[f"RC_{n}"] = [
            (1, ("Rel", f"V_intrans_{n}")),
            (0.5, ("Rel", "Det", "N_sg", "V_trans_sg")),
            (0.5, ("Rel", "Det", "N_pl", "V_trans_pl")),
            (0.5, ("Rel", f"V_trans_{n}", "Det", "N_sg")),
            (0.5, ("Rel", f"V_trans_{n}", "Det", "N_pl")),
        ]
        g[f"V_intrans_{n}"] = [(1, (verb(v, n),)) for v in VERBS_INTRANS]
        g[f"V_trans_{n}"] = [(1, (verb(v, n),)) for v in VERBS_TRANS]
    return g


GRAMMAR = build_grammar(present_form)  # targets of PRESENT lines
PAST_GRAMMAR = build_grammar(past_form)  # every input sentence
TO_PAST = {present_form(v, n): PAST_FORMS[v] for v in PAST_FORMS for n in NUMBERS}
NOUN_NUMBER = {**{w: "sg" for w in NOUNS_SG}, **{w: "pl" for w in NOUNS_PL}}
VERBS = frozenset(TO_PAST) | frozenset(PAST_FORMS.values())
POS = {**{w: "D" for w in DETS}, **{w: "N" for w in NOUN_NUMBER}, **{w: "V" for w in VERBS},
       **{w: "P" for w in PREPS}, **{w: "R" for w in RELS}}  # fmt: skip


# ---- facts read off a derivation ----------------------------------------------------------------------


def _conflict(tree: Tree) -> bool:
    """Do the subject and the noun right before the main verb differ in number?"""
    subject = tree.children[0].children[0]  # ROOT -> S . ; S -> NP_M VP_M
    recent = [w for w in subject.leaves if w in NOUN_NUMBER][-1]
    return NOUN_NUMBER[recent] != subject.label.rsplit("_", 1)[1]


def _parse_past(words: Sequence[str]) -> Tree:
    tree = parse(PAST_GRAMMAR, [*words, "."])
    if tree is None:
        raise ValueError(f"not a past-tense tense-inflection sentence: {' '.join(words)!r}")
    return tree


def sentence_words(example: Example) -> list[str]:
    """The (past-tense) sentence of an example's input, without `.` and the task marker."""
    words = example.input.split()
    return words[: words.index(".")]


def agreement_conflict(words: Sequence[str]) -> bool:
    """For a past-tense sentence without `.`: would most-recent-noun agreement mislead on the main verb?"""
    return _conflict(_parse_past(words))


def gold_parse(sentence: str | Example) -> GoldTree:
    """Gold tree of the input sentence, over its words without `.` and marker."""
    words = sentence_words(sentence) if isinstance(sentence, Example) else sentence.split()
    return gold_tree(_parse_past([w for w in words if w not in (".", PAST, PRESENT)]))


def tree_sentences(examples: Sequence[Example]) -> list[str]:
    """Every line's input sentence."""
    return [" ".join(sentence_words(ex)) for ex in examples]


# ---- generation -----------------------------------------------------------------------------------------


def _example(tree: Tree, marker: str) -> Example:
    return _line(tree.leaves, marker)


def _line(present: Sequence[str], marker: str) -> Example:
    """The line of a present-tense sentence (with its `.`): the input is always in the past."""
    past = " ".join(TO_PAST.get(w, w) for w in present)
    return Example(f"{past} {marker}", past if marker == PAST else " ".join(present))


def _draw_in_distribution(sampler: Sampler, rng: random.Random) -> Example:
    while True:
        tree = sampler.sample(rng)
        if rng.random() < 0.5:
            return _example(tree, PAST)
        if not _conflict(tree):
            return _example(tree, PRESENT)


def _draw_gen(sampler: Sampler, rng: random.Random) -> Example:
    while True:
        tree = sampler.sample(rng)
        if _conflict(tree):
            return _example(tree, PRESENT)


def generate(seed: int, sizes: dict[str, int] = SIZES, mix: str = "published") -> dict[str, list[Example]]:
    """All four splits for `seed`, in the published structure mix or (`mix="grammar"`) by rule weights."""
    return _generate_published(seed, sizes) if mix == "published" else _generate_by_grammar(seed, sizes)


def _generate_by_grammar(seed: int, sizes: dict[str, int]) -> dict[str, list[Example]]:
    """Train is drawn i.i.d. (repeats allowed, as the grammar weights them); dev/test/gen lines are
    unique and never occur in train or in another held-out split."""
    rng = random.Random(f"tense-inflection:{seed}")
    sampler = Sampler(GRAMMAR)
    train = [_draw_in_distribution(sampler, rng) for _ in range(sizes["train"])]
    seen = {ex.input for ex in train}
    out = {"train": train}
    for split in ("dev", "test"):
        out[split] = draw_unique(lambda: _draw_in_distribution(sampler, rng), sizes[split], seen)
    out["gen"] = draw_unique(lambda: _draw_gen(sampler, rng), sizes["gen"], seen)
    return out


# ---- generation in the published mix ---------------------------------------------------------------------

TAGS = {**dict.fromkeys(DETS, "D"), **dict.fromkeys(NOUN_NUMBER, "N"), **dict.fromkeys(PREPS, "P"),
        **dict.fromkeys(RELS, "R"), **{PAST_FORMS[v]: "I" for v in VERBS_INTRANS},
        **{PAST_FORMS[v]: "T" for v in VERBS_TRANS}}  # fmt: skip
_NOUNS = {"sg": NOUNS_SG, "pl": NOUNS_PL}
_INTRANS = {n: tuple(present_form(v, n) for v in VERBS_INTRANS) for n in NUMBERS}
_TRANS = {n: tuple(present_form(v, n) for v in VERBS_TRANS) for n in NUMBERS}


def _noun_phrase(n: str, kind: str, last: str) -> list[Slot]:
    """Slots of `Det N_n` with modifier `kind` (present tense); `last` is the number of the modifier's
    noun (the prepositional object, the clause's object, or the object-gap clause's subject)."""
    return [DETS, _NOUNS[n]] + {
        "none": [],
        "PP": [PREPS, DETS, _NOUNS[last]],
        "RC-subj-gap/intr": [RELS, _INTRANS[n]],
        "RC-subj-gap/trans": [RELS, _TRANS[n], DETS, _NOUNS[last]],
        "RC-obj-gap": [RELS, DETS, _NOUNS[last], _TRANS[last]],
    }[kind]


def _frames(t: Template, rule: str) -> Frames:
    """Every present-tense sentence of template `t` that split rule `rule` (`in` or `gen`) allows."""
    if rule == "gen" and t.marker != PRESENT:
        return Frames([])
    frames = []
    for n, last, obj, obj_last in product(NUMBERS, repeat=4):
        # the noun right before the main verb: the subject's own unless its modifier ends in a noun
        conflict = t.subject not in ("none", "RC-subj-gap/intr") and last != n
        if not (conflict if rule == "gen" else not conflict or t.marker == PAST):
            continue
        vp = [_INTRANS[n]] if t.after == "intransitive" else [_TRANS[n], *_noun_phrase(obj, t.after, obj_last)]
        frames.append(tuple(_noun_phrase(n, t.subject, last) + vp))
    return Frames(frames)


def spaces() -> dict[str, Space]:
    """The lines each split rule allows, per template."""
    return {rule: {t: _frames(t, rule) for t in templates((PAST, PRESENT))} for rule in ("in", "gen")}


def _generate_published(seed: int, sizes: dict[str, int]) -> dict[str, list[Example]]:
    lines = draw_published("tense-inflection", "tense", seed, sizes, spaces())
    return {s: [_line([*words, "."], t.marker) for t, words in lines[s]] for s in sizes}


def structure(example: Example) -> tuple[tuple[str, str, str], int]:
    """The published cell of a line and its words per declarative (ValueError if it is not a TI line)."""
    words = example.input.split()
    if words[-2:-1] != ["."] or words[-1] not in (PAST, PRESENT):
        raise ValueError(f"expected '<past-tense sentence> . {PAST}|{PRESENT}', got {example.input!r}")
    subject, after = classify(words[:-2], TAGS, aux=False)
    return (coarse(subject), coarse(after), words[-1]), len(words) - 2


# ---- scoring --------------------------------------------------------------------------------------------


def main_verb_index(words: Sequence[str]) -> int | None:
    """The second verb if a relative clause follows the subject noun (`Det N Rel ...`), else the first."""
    verbs = [i for i, w in enumerate(words) if POS.get(w) == "V"]
    k = 1 if len(words) > 2 and words[2] in RELS else 0
    return verbs[k] if len(verbs) > k else None


def ti_main_verb_correct(pred_target: str, example: Example) -> bool:
    """The published metric (Murty et al.'s `main_right_tense`): the prediction has the target's
    part-of-speech sequence and the same word at the main-verb position (form = number and tense)."""
    pred = [w for w in pred_target.split() if w != "."]
    gold = [w for w in example.target.split() if w != "."]
    if [POS.get(w) for w in pred] != [POS.get(w) for w in gold]:
        return False
    i = main_verb_index(gold)
    return i is not None and pred[i] == gold[i]


def score(logits_fn: LogitsFn, examples: Sequence[Example], vocab: Vocab, batch_size: int = 256) -> dict[str, float]:
    """Greedy-decode every target (`PAST` and `PRESENT` lines, as the released code does); `acc` is
    main-verb accuracy, `full_seq_acc` exact match. Decoding stops at `<eos>` or one token past the
    target's length."""
    if not examples:
        return {"acc": float("nan"), "full_seq_acc": float("nan")}
    prefixes = [[vocab.sos_id, *vocab.encode(ex.input.split())] for ex in examples]
    max_new = [len(ex.target.split()) + 1 for ex in examples]
    decoded = greedy_decode(logits_fn, prefixes, max_new, vocab.eos_id, batch_size)
    preds = [" ".join(vocab.decode(ids)) for ids in decoded]
    n = len(examples)
    return {
        "acc": sum(ti_main_verb_correct(p, ex) for p, ex in zip(preds, examples)) / n,
        "full_seq_acc": sum(p == ex.target for p, ex in zip(preds, examples)) / n,
    }


def make_task(sizes: dict[str, int] = SIZES, mix: str = "published") -> LMTask:
    # The grammar mix keeps its old parameters, so data cached before the published mix existed is reused.
    params = {"version": 1, "sizes": dict(sizes)} if mix == "grammar" else {"version": 2, "mix": mix, "sizes": dict(sizes)}
    return LMTask(
        name="tense-inflection",
        file_stem="tense",
        split_names=("train", "dev", "test", "gen"),
        vocab=Vocab(terminals(GRAMMAR) | terminals(PAST_GRAMMAR) | {PAST, PRESENT}),
        params=params,
        generate=lambda seed: generate(seed, sizes, mix),
        score=score,
        structure=structure,
        tree_sentences=tree_sentences,
        gold_parse=gold_parse,
    )


TASK = make_task()
TASKS = {"published": TASK, "grammar": make_task(mix="grammar")}
