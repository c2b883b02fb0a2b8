"""Question formation (McCoy, Frank & Linzen 2020), as used by Murty et al. (2023) for structural grokking.

`my raven that doesn't sleep does change . quest` -> `does my raven that doesn't sleep change ?`:
the *main* auxiliary moves to the front. Declaratives (`decl`) are copied. Training data cannot tell
"move the main auxiliary" from "move the first auxiliary", because in every in-distribution `quest`
line the subject has no auxiliary of its own; the generalisation set tells them apart.

Split rules, as in the published files (McCoy et al.'s `question.*`):
- train/dev/test: draw a sentence from the grammar and a marker (`decl` or `quest`, 1/2 each); a
  `quest` whose subject carries a relative clause is redrawn. So declaratives (about 60% of lines) may
  have relative clauses on the subject, questions never do.
- gen: `quest` only. The subject is `Det N RC`, the RC auxiliary has the main auxiliary's number but
  the opposite polarity (does/doesn't, do/don't), and the object has no relative clause. The first
  auxiliary is then never the main one, and moving it gives a visibly different first word.

Two mixes of sentence structures (config key `mix`): `published` (default) draws each split in the
structure mix of the published files (`structure_mix.py`, `published_mix.py`), every line unique within
and across splits; `grammar` samples the grammar by its rule weights, the lab's generator before 2026-11-30.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import product

from grokking.tasks.grammar import GoldTree, Grammar, Sampler, Tree, gold_tree, parse, terminals
from grokking.tasks.lm_data import Example, LMTask, LogitsFn, Vocab, draw_unique, next_token_logits
from grokking.tasks.structure_mix import Frames, Slot, Space, Template, classify, coarse, draw_published, templates

DETS = ("the", "some", "my", "your", "our", "her")
NOUNS_SG = ("newt", "orangutan", "peacock", "quail", "raven", "salamander", "tyrannosaurus", "unicorn", "vulture",
            "walrus", "xylophone", "yak", "zebra")  # fmt: skip
NOUNS_PL = tuple(n + ("es" if n.endswith("s") else "s") for n in NOUNS_SG)
VERBS_INTRANS = ("giggle", "smile", "sleep", "swim", "wait", "move", "change", "read", "eat")
VERBS_TRANS = ("entertain", "amuse", "high_five", "applaud", "confuse", "admire", "accept", "remember", "comfort")
PREPS = ("around", "near", "with", "upon", "by", "behind", "above", "below")
RELS = ("who", "that")
AUX = {"S": ("does", "doesn't"), "P": ("do", "don't")}
AUXILIARIES = ("do", "does", "don't", "doesn't")
DECL, QUEST = "decl", "quest"
SIZES = {"train": 100_000, "dev": 1_000, "test": 10_000, "gen": 10_000}


def build_grammar() -> Grammar:
    """McCoy et al.'s `question.gr`, rule for rule and weight for weight."""
    g: Grammar = {
        "ROOT": [(1, ("S", "."))],
        "S": [(1, ("NP_M_S", "VP_M_S")), (1, ("NP_M_P", "VP_M_P"))],
        "NP_O": [(1, ("Det", f"N_{n}")) for n in "SP"]
        + [(1, ("Det", f"N_{n}", "Prep", "Det", "N")) for n in "SP"]
        + [(1, ("Det", f"N_{n}", f"RC_{n}")) for n in "SP"],
        "N": [(1, ("N_S",)), (1, ("N_P",))],
    }
    for n in "SP":
        g[f"NP_M_{n}"] = [(1, ("Det", f"N_{n}")), (1, ("Det", f"N_{n}", "Prep", "Det", "N")), (1, ("Det", f"N_{n}", f"RC_{n}"))]
        g[f"VP_M_{n}"] = [(1, (f"Aux_{n}", "V_intrans")), (1, (f"Aux_{n}", "V_trans", "NP_O"))]
        g[f"RC_{n}"] = [
            (2, ("Rel", f"Aux_{n}", "V_intrans")),
            (1, ("Rel", "Det", "N_S", "Aux_S", "V_trans")),
            (1, ("Rel", "Det", "N_P", "Aux_P", "V_trans")),
            (2, ("Rel", f"Aux_{n}", "V_trans", "Det", "N")),
        ]
        g[f"Aux_{n}"] = [(1, (w,)) for w in AUX[n]]
    lexicon = {"Det": DETS, "N_S": NOUNS_SG, "N_P": NOUNS_PL, "V_intrans": VERBS_INTRANS, "V_trans": VERBS_TRANS,
               "Prep": PREPS, "Rel": RELS}  # fmt: skip
    g.update({pos: [(1, (w,)) for w in words] for pos, words in lexicon.items()})
    return g


def _gen_grammar(grammar: Grammar) -> Grammar:
    """Conditioning the PCFG on 'subject has an RC, object has none' is just dropping the other rules."""
    g = dict(grammar)
    for n in "SP":
        g[f"NP_M_{n}"] = [r for r in grammar[f"NP_M_{n}"] if r[1][-1].startswith("RC")]
    g["NP_O"] = [r for r in grammar["NP_O"] if not r[1][-1].startswith("RC")]
    return g


GRAMMAR = build_grammar()
GEN_GRAMMAR = _gen_grammar(GRAMMAR)


# ---- facts read off a derivation ----------------------------------------------------------------------


def _subject_and_vp(tree: Tree) -> tuple[Tree, Tree]:
    s = tree.children[0]  # ROOT -> S .
    return s.children[0], s.children[1]


def _rc_aux(subject: Tree) -> str | None:
    """The auxiliary inside the subject's relative clause, if it has one."""
    rc = subject.children[-1]
    if not rc.label.startswith("RC"):
        return None
    return next(c.leaves[0] for c in rc.children if c.label.startswith("Aux"))


def _parse(words: Sequence[str]) -> Tree:
    tree = parse(GRAMMAR, [*words, "."])
    if tree is None:
        raise ValueError(f"not a question-formation sentence: {' '.join(words)!r}")
    return tree


def main_aux_index(words: Sequence[str]) -> int:
    """Position of the main auxiliary in a declarative without its `.` (parsed, so any file's data works)."""
    return len(_subject_and_vp(_parse(words))[0].leaves)


def first_aux_index(words: Sequence[str]) -> int:
    return next(i for i, w in enumerate(words) if w in AUXILIARIES)


def declarative_words(example: Example) -> list[str]:
    """The sentence of an example's input, without `.` and the task marker."""
    words = example.input.split()
    return words[: words.index(".")]


def gold_parse(sentence: str | Example) -> GoldTree:
    """Gold tree of the declarative, over its words without `.` and marker (spans index those words)."""
    words = declarative_words(sentence) if isinstance(sentence, Example) else sentence.split()
    return gold_tree(_parse([w for w in words if w not in (".", DECL, QUEST)]))


# ---- generation -----------------------------------------------------------------------------------------


def _example(tree: Tree, marker: str) -> Example:
    return _line(tree.leaves[:-1], len(_subject_and_vp(tree)[0].leaves), marker)


def _line(words: Sequence[str], main_aux: int, marker: str) -> Example:
    """The line of a declarative (without `.`) whose main auxiliary is `words[main_aux]`."""
    if marker == DECL:
        return Example(" ".join([*words, ".", DECL]), " ".join([*words, "."]))
    i = main_aux
    return Example(" ".join([*words, ".", QUEST]), " ".join([words[i], *words[:i], *words[i + 1 :], "?"]))


def _draw_in_distribution(sampler: Sampler, rng: random.Random) -> Example:
    while True:
        tree = sampler.sample(rng)
        if rng.random() < 0.5:
            return _example(tree, DECL)
        if _rc_aux(_subject_and_vp(tree)[0]) is None:
            return _example(tree, QUEST)


def _draw_gen(sampler: Sampler, rng: random.Random) -> Example:
    """From the gen grammar, keep RC auxiliaries of the main one's number and opposite polarity."""
    while True:
        tree = sampler.sample(rng)
        subject, vp = _subject_and_vp(tree)
        main, rc = vp.leaves[0], _rc_aux(subject)
        same_number = (main in AUX["S"]) == (rc in AUX["S"])
        if same_number and main != rc:
            return _example(tree, QUEST)


def generate(seed: int, sizes: dict[str, int] = SIZES, mix: str = "published") -> dict[str, list[Example]]:
    """All four splits for `seed`, in the published structure mix or (`mix="grammar"`) by rule weights."""
    return _generate_published(seed, sizes) if mix == "published" else _generate_by_grammar(seed, sizes)


def _generate_by_grammar(seed: int, sizes: dict[str, int]) -> dict[str, list[Example]]:
    """Train is drawn i.i.d. (repeats allowed, as the grammar weights them); dev/test/gen lines are
    unique and never occur in train or in another held-out split."""
    rng = random.Random(f"question-formation:{seed}")
    sampler, gen_sampler = Sampler(GRAMMAR), Sampler(GEN_GRAMMAR)
    train = [_draw_in_distribution(sampler, rng) for _ in range(sizes["train"])]
    seen = {ex.input for ex in train}
    out = {"train": train}
    for split in ("dev", "test"):
        out[split] = draw_unique(lambda: _draw_in_distribution(sampler, rng), sizes[split], seen)
    out["gen"] = draw_unique(lambda: _draw_gen(gen_sampler, rng), sizes["gen"], seen)
    return out


# ---- generation in the published mix ---------------------------------------------------------------------

TAGS = {**dict.fromkeys(DETS, "D"), **dict.fromkeys(NOUNS_SG + NOUNS_PL, "N"), **dict.fromkeys(AUXILIARIES, "A"),
        **dict.fromkeys(VERBS_INTRANS, "I"), **dict.fromkeys(VERBS_TRANS, "T"), **dict.fromkeys(PREPS, "P"),
        **dict.fromkeys(RELS, "R")}  # fmt: skip
SUBJECT_WORDS = {"none": 2, "PP": 5, "RC-subj-gap/intr": 5, "RC-subj-gap/trans": 7, "RC-obj-gap": 7}
_NOUNS = {"S": NOUNS_SG, "P": NOUNS_PL}


def _noun_phrase(n: str, kind: str, inner: str, rc_aux: Callable[[str], Slot]) -> list[Slot]:
    """Slots of `Det N_n` with modifier `kind`; `inner` is the number of an object-gap clause's noun,
    `rc_aux(number)` the auxiliaries a relative clause may take."""
    head = [DETS, _NOUNS[n]]
    return (
        head
        + {
            "none": [],
            "PP": [PREPS, DETS, NOUNS_SG + NOUNS_PL],
            "RC-subj-gap/intr": [RELS, rc_aux(n), VERBS_INTRANS],
            "RC-subj-gap/trans": [RELS, rc_aux(n), VERBS_TRANS, DETS, NOUNS_SG + NOUNS_PL],
            "RC-obj-gap": [RELS, DETS, _NOUNS[inner], rc_aux(inner), VERBS_TRANS],
        }[kind]
    )


def _frames(t: Template, rule: str) -> Frames:
    """Every declarative of template `t` that split rule `rule` (`in` or `gen`) allows."""
    subject_rc = t.subject.startswith("RC")
    if rule == "in" and t.marker == QUEST and subject_rc:
        return Frames([])
    if rule == "gen" and (t.marker != QUEST or not subject_rc or t.after.startswith("RC")):
        return Frames([])
    frames = []
    for n, inner, obj, obj_inner, polarity in product("SP", "SP", "SP", "SP", (0, 1)):
        if rule == "gen":  # the clause's auxiliary: the main one's number, the other polarity
            if inner != n:
                continue
            main, rc_aux = (AUX[n][polarity],), (lambda _: (AUX[n][1 - polarity],))
        else:
            main, rc_aux = AUX[n], (lambda m: AUX[m])
        vp = [main, VERBS_INTRANS] if t.after == "intransitive" else \
            [main, VERBS_TRANS, *_noun_phrase(obj, t.after, obj_inner, lambda m: AUX[m])]  # fmt: skip
        frames.append(tuple(_noun_phrase(n, t.subject, inner, rc_aux) + vp))
    return Frames(frames)


def spaces() -> dict[str, Space]:
    """The lines each split rule allows, per template."""
    return {rule: {t: _frames(t, rule) for t in templates((DECL, QUEST))} for rule in ("in", "gen")}


def _generate_published(seed: int, sizes: dict[str, int]) -> dict[str, list[Example]]:
    lines = draw_published("question-formation", "question", seed, sizes, spaces())
    return {s: [_line(words, SUBJECT_WORDS[t.subject], t.marker) for t, words in lines[s]] for s in sizes}


def structure(example: Example) -> tuple[tuple[str, str, str], int]:
    """The published cell of a line and its words per declarative (ValueError if it is not a QF line)."""
    words = example.input.split()
    if words[-2:-1] != ["."] or words[-1] not in (DECL, QUEST):
        raise ValueError(f"expected '<declarative> . {DECL}|{QUEST}', got {example.input!r}")
    subject, after = classify(words[:-2], TAGS, aux=True)
    return (coarse(subject), coarse(after), words[-1]), len(words) - 2


# ---- scoring --------------------------------------------------------------------------------------------


def is_question(example: Example) -> bool:
    return example.input.split()[-1] == QUEST


def tree_sentences(examples: Sequence[Example]) -> list[str]:
    """The declaratives of `quest` lines, as the paper's code projected them."""
    return [" ".join(declarative_words(ex)) for ex in examples if is_question(ex)]


def qf_is_correct(pred_first_word: str, example: Example) -> bool:
    """The published metric: the predicted first word of the question is the right auxiliary."""
    return pred_first_word == example.target.split()[0]


def score(logits_fn: LogitsFn, examples: Sequence[Example], vocab: Vocab, batch_size: int = 256) -> dict[str, float]:
    """Over `quest` lines only: argmax over {do, does, don't, doesn't} right after `quest`.

    `acc` (alias `first_aux_acc`, the paper's name) is the published number; `linear_rule_rate` is
    how often the model instead fronts the linearly first auxiliary (equal to acc in distribution, the
    tell-tale of the non-hierarchical rule on gen). Where subjects carry relative clauses (gen), acc is
    also split by the clause's gap: `subj_rel_acc` (`my raven that doesn't sleep ...`) and `obj_rel_acc`
    (`my raven that her newt doesn't amuse ...`), because models can master one kind and not the other.
    """
    questions = [ex for ex in examples if is_question(ex)]
    if not questions:
        return {"acc": float("nan"), "first_aux_acc": float("nan"), "linear_rule_rate": float("nan")}
    prefixes = [[vocab.sos_id, *vocab.encode(ex.input.split())] for ex in questions]
    aux_ids = vocab.encode(AUXILIARIES)
    picks = next_token_logits(logits_fn, prefixes, batch_size)[:, aux_ids].argmax(-1).tolist()
    preds = [AUXILIARIES[p] for p in picks]
    correct = [qf_is_correct(p, ex) for p, ex in zip(preds, questions)]
    acc = sum(correct) / len(questions)
    linear = sum(p == next(w for w in ex.input.split() if w in AUXILIARIES) for p, ex in zip(preds, questions))
    out = {"acc": acc, "first_aux_acc": acc, "linear_rule_rate": linear / len(questions)}
    by_gap: dict[str, list[bool]] = {}
    for ok, ex in zip(correct, questions):
        if gap := subject_relative_gap(ex.input.split()):
            by_gap.setdefault(f"{gap}_rel_acc", []).append(ok)
    return out | {key: sum(oks) / len(oks) for key, oks in sorted(by_gap.items())}


def subject_relative_gap(words: Sequence[str]) -> str | None:
    """`subj` or `obj`: where the gap of the subject's relative clause is; None when the subject has none.

    The subject ends at the first auxiliary unless a relative pronoun comes first; the word after the
    pronoun is then an auxiliary (the clause lacks its subject) or a determiner (it lacks its object).
    """
    rel = next((i for i, w in enumerate(words) if w in RELS), None)
    first_aux = next(i for i, w in enumerate(words) if w in AUXILIARIES)
    if rel is None or rel > first_aux:
        return None
    return "subj" if words[rel + 1] in AUXILIARIES else "obj"


def make_task(sizes: dict[str, int] = SIZES, mix: str = "published") -> LMTask:
    # The grammar mix keeps its old parameters, so data cached before the published mix existed is reused.
    params = {"version": 1, "sizes": dict(sizes)} if mix == "grammar" else {"version": 2, "mix": mix, "sizes": dict(sizes)}
    return LMTask(
        name="question-formation",
        file_stem="question",
        split_names=("train", "dev", "test", "gen"),
        vocab=Vocab(terminals(GRAMMAR) | {"?", DECL, QUEST}),
        params=params,
        generate=lambda seed: generate(seed, sizes, mix),
        score=score,
        structure=structure,
        tree_sentences=tree_sentences,
        gold_parse=gold_parse,
    )


TASK = make_task()
TASKS = {"published": TASK, "grammar": make_task(mix="grammar")}
