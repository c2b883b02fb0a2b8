"""Property tests of the structural-grokking data: grammars, split rules, files, cache and metrics."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from grokking.errors import UserError
from grokking.tasks import dyck
from grokking.tasks import question_formation as qf
from grokking.tasks import tense_inflection as ti
from grokking.tasks.grammar import derivable
from grokking.tasks.lm_data import Example, Vocab, encode, read_examples
from grokking.tasks.registry import get_lm_task

SMALL = {"train": 3000, "dev": 200, "test": 300, "gen": 500}
SMALL_DYCK = {"train": 3000, "dev": 300, "gen": 300}


@pytest.fixture(scope="module")
def qf_data() -> dict[str, list[Example]]:
    return qf.generate(3, SMALL)


@pytest.fixture(scope="module")
def ti_data() -> dict[str, list[Example]]:
    return ti.generate(3, SMALL)


@pytest.fixture(scope="module")
def dyck_data() -> dict[str, list[Example]]:
    return dyck.generate(3, sizes=SMALL_DYCK)


def marker(ex: Example) -> str:
    return ex.input.split()[-1]


# ---- grammar and generation --------------------------------------------------------------------------


def test_every_qf_sentence_parses_and_questions_front_the_main_aux(qf_data):
    for split, examples in qf_data.items():
        assert len(examples) == SMALL[split]
        for ex in examples:
            words = qf.declarative_words(ex)
            assert derivable(qf.GRAMMAR, [*words, "."]), ex
            if marker(ex) == qf.DECL:
                assert ex.target == " ".join([*words, "."])
            else:
                i = qf.main_aux_index(words)
                assert ex.target.split() == [words[i], *words[:i], *words[i + 1 :], "?"]


def test_every_ti_sentence_parses_in_both_tenses(ti_data):
    for examples in ti_data.values():
        for ex in examples:
            words = ti.sentence_words(ex)
            assert derivable(ti.PAST_GRAMMAR, [*words, "."]), ex
            if marker(ex) == ti.PAST:
                assert ex.target == " ".join([*words, "."])
            else:
                assert derivable(ti.GRAMMAR, ex.target.split()), ex


def test_qf_split_rule(qf_data):
    in_dist = [ex for s in ("train", "dev", "test") for ex in qf_data[s]]
    assert {marker(ex) for ex in qf_data["train"]} == {qf.DECL, qf.QUEST}
    assert any(qf.first_aux_index(w := qf.declarative_words(ex)) != qf.main_aux_index(w) for ex in in_dist), \
        "declaratives with a subject relative clause belong in training"  # fmt: skip
    for ex in in_dist:
        if marker(ex) == qf.QUEST:
            words = qf.declarative_words(ex)
            assert qf.first_aux_index(words) == qf.main_aux_index(words), ex
    for ex in qf_data["gen"]:
        assert marker(ex) == qf.QUEST
        words = qf.declarative_words(ex)
        first, main = qf.first_aux_index(words), qf.main_aux_index(words)
        assert first != main and words[first] != words[main], ex


def _recent_noun_conflict(past_words: list[str]) -> bool:
    """Independent of the generator: subject noun (index 1) vs the last noun before the main verb."""
    verb = ti.main_verb_index(past_words)
    recent = [w for w in past_words[:verb] if w in ti.NOUN_NUMBER][-1]
    return ti.NOUN_NUMBER[recent] != ti.NOUN_NUMBER[past_words[1]]


def test_ti_split_rule(ti_data):
    assert {marker(ex) for ex in ti_data["train"]} == {ti.PAST, ti.PRESENT}
    for split in ("train", "dev", "test"):
        for ex in ti_data[split]:
            if marker(ex) == ti.PRESENT:
                assert not _recent_noun_conflict(ti.sentence_words(ex)), ex
                assert not ti.agreement_conflict(ti.sentence_words(ex)), ex
    for ex in ti_data["gen"]:
        assert marker(ex) == ti.PRESENT
        assert _recent_noun_conflict(ti.sentence_words(ex)) and ti.agreement_conflict(ti.sentence_words(ex)), ex


def test_dyck_strings_are_balanced_and_gen_structures_unseen(dyck_data):
    for examples in dyck_data.values():
        for ex in examples:
            words = ex.input.split()
            assert dyck.is_balanced(words, m=10) and len(words) >= 6, ex
    seen = {seg for ex in dyck_data["train"] for seg in dyck.segments(ex.input.split())}
    train = {ex.input for ex in dyck_data["train"]}
    for ex in dyck_data["dev"]:
        assert ex.input not in train and all(seg in seen for seg in dyck.segments(ex.input.split()))
    for ex in dyck_data["gen"]:
        assert any(seg not in seen for seg in dyck.segments(ex.input.split()))


def test_dyck_depth_is_capped_at_m():
    import random

    rng = random.Random(0)
    strings = [dyck.sample(rng, k=3, m=2, min_len=6) for _ in range(500)]
    assert all(dyck.is_balanced(s, m=2) for s in strings)
    assert not all(dyck.is_balanced(s, m=1) for s in strings)


@pytest.mark.parametrize("fixture", ["qf_data", "ti_data", "dyck_data"])
def test_held_out_lines_are_unique_and_never_in_train(fixture, request):
    data = request.getfixturevalue(fixture)
    train = {ex.input for ex in data["train"]}
    held_out = [ex.input for split, exs in data.items() if split != "train" for ex in exs]
    assert len(set(held_out)) == len(held_out)
    assert not train & set(held_out)


@pytest.mark.parametrize("generate", [
    lambda seed: qf.generate(seed, SMALL),
    lambda seed: ti.generate(seed, SMALL),
    lambda seed: dyck.generate(seed, sizes=SMALL_DYCK),
    lambda seed: qf.generate(seed, SMALL, mix="grammar"),
    lambda seed: ti.generate(seed, SMALL, mix="grammar"),
])  # fmt: skip
def test_generation_is_deterministic_per_seed(generate: Callable):
    assert generate(7) == generate(7)
    assert generate(7)["train"] != generate(8)["train"]


def test_vocab_covers_generated_data(qf_data, ti_data, dyck_data):
    for task, data in ((qf.TASK, qf_data), (ti.TASK, ti_data), (dyck.TASK, dyck_data)):
        assert task.vocab.tokens[:3] == ["<pad>", "<sos>", "<eos>"]
        assert all(w in task.vocab for exs in data.values() for ex in exs for w in ex.words)
    assert len(dyck.TASK.vocab) == 3 + 40


# ---- gold parses -----------------------------------------------------------------------------------------


def test_gold_parse_matches_published_bracketing():
    tree = qf.gold_parse("your xylophones who the vulture doesn't high_five don't remember her yaks near her peacocks")
    assert tree.brackets == ("(((your xylophones) (who ((the vulture) (doesn't high_five)))) (don't (remember ((her yaks) (near (her peacocks))))))")
    assert qf.gold_parse(Example("the walrus does giggle . quest", "does the walrus giggle ?")).spans == {
        (0, 1), (2, 3), (0, 3)
    }  # fmt: skip
    tree = ti.gold_parse("the tyrannosaurus who my vultures comforted accepted my newt behind some newts . PAST")
    assert tree.brackets == "(((the tyrannosaurus) (who ((my vultures) comforted))) (accepted ((my newt) (behind (some newts)))))"
    assert tree.spans == {(0, 1), (3, 4), (3, 5), (2, 5), (0, 5), (7, 8), (10, 11), (9, 11), (7, 11), (6, 11), (0, 11)}


def test_gold_parse_spans_form_a_binary_tree(qf_data):
    for ex in qf_data["dev"]:
        tree = qf.gold_parse(ex)
        assert len(tree.spans) == len(tree.words) - 1
        assert (0, len(tree.words) - 1) in tree.spans


# ---- files, cache, registry -------------------------------------------------------------------------------


def test_bad_lines_raise_user_error_naming_file_and_line(tmp_path):
    vocab = qf.TASK.vocab
    good = "the walrus does giggle . decl\tthe walrus does giggle ."
    path = tmp_path / "question.dev"
    path.write_text(f"{good}\n{good}\nthe walrus does giggle . decl the walrus does giggle .\n")
    with pytest.raises(UserError, match=r"question\.dev:3:"):
        read_examples(path, vocab)
    path.write_text(f"{good}\nthe walrus does dance . decl\tthe walrus does dance .\n")
    with pytest.raises(UserError, match=r"question\.dev:2:.*'dance'"):
        read_examples(path, vocab)
    dyck_path = tmp_path / "dyck.train"
    dyck_path.write_text("(a a)\n(a (z z) a)\n")
    with pytest.raises(UserError, match=r"dyck\.train:2:.*'\(z'"):
        read_examples(dyck_path, dyck.TASK.vocab, paired=False)


def test_published_lines_load_and_follow_the_split_rules(tmp_path):
    """A few lines of McCoy et al.'s released files (and Murty et al.'s Dyck data), verbatim."""
    (tmp_path / "question.gen").write_text(
        "my raven that doesn't sleep does change . quest\tdoes my raven that doesn't sleep change ?\n"
        "our raven who my tyrannosaurus doesn't confuse does amuse some unicorns . quest\t"
        "does our raven who my tyrannosaurus doesn't confuse amuse some unicorns ?\n"
    )
    for ex in read_examples(tmp_path / "question.gen", qf.TASK.vocab):
        words = qf.declarative_words(ex)
        assert qf.first_aux_index(words) != qf.main_aux_index(words)
        assert qf.qf_is_correct(words[qf.main_aux_index(words)], ex)
    (tmp_path / "tense.gen").write_text(
        "the yaks that some unicorn entertained applauded her salamanders below some walrus . PRESENT\t"
        "the yaks that some unicorn entertains applaud her salamanders below some walrus .\n"
        "our zebra below the vultures changed . PRESENT\tour zebra below the vultures changes .\n"
    )
    for ex in read_examples(tmp_path / "tense.gen", ti.TASK.vocab):
        assert ti.agreement_conflict(ti.sentence_words(ex)) and ti.ti_main_verb_correct(ex.target, ex)
    (tmp_path / "dyck.dev").write_text("(h h) (j j) (q (n (r r) n) q) (r r)\n(m (h (f f) h) m)\n")
    assert all(dyck.is_balanced(ex.input.split(), 10) for ex in read_examples(tmp_path / "dyck.dev", dyck.TASK.vocab, False))


def test_splits_are_cached_as_published_files_and_exported(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_DATA_CACHE", str(tmp_path / "cache"))
    task = qf.make_task(SMALL)
    first = task.splits(seed=2)
    cache = task.cache_dir(2)
    assert cache.parent == tmp_path / "cache" and cache.name.startswith("question-formation-seed2-")
    assert sorted(p.name for p in cache.glob("question.*")) == ["question.dev", "question.gen", "question.test", "question.train"]
    assert task.splits(seed=2) == first  # read back from the cache
    assert (cache / "question.train").read_text().splitlines()[0] == f"{first['train'][0].input}\t{first['train'][0].target}"
    task.export(tmp_path / "out", seed=2)
    assert task.splits(data_dir=tmp_path / "out") == first
    with pytest.raises(UserError, match="no such data file"):
        task.splits(data_dir=tmp_path / "missing")


def test_dyck_files_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("GROKKING_DATA_CACHE", str(tmp_path))
    task = dyck.make_task(k=4, m=3, sizes={"train": 200, "dev": 20, "gen": 20})
    data = task.splits(seed=0)
    assert task.splits(data_dir=task.cache_dir(0)) == data
    assert "\t" not in (task.cache_dir(0) / "dyck.gen").read_text()


def test_registry_suggests_nearest_name():
    assert get_lm_task("dyck") is dyck.TASK
    assert get_lm_task("question-formation").name == "question-formation"
    with pytest.raises(UserError, match="did you mean 'tense-inflection'"):
        get_lm_task("tense-inflect")


def test_encode_masks_every_predicted_token():
    vocab = Vocab(["a", "b", "c"])
    enc = encode([Example("a b", "c"), Example("a", "b c a")], vocab)
    assert enc.tokens.tolist() == [[1, 3, 4, 5, 2, 0], [1, 3, 4, 5, 3, 2]]
    assert enc.loss_mask.tolist() == [[True] * 4 + [False] * 2, [True] * 5 + [False]]
    assert enc.target_start.tolist() == [3, 2]


# ---- metrics on hand-made predictions -------------------------------------------------------------------


def test_qf_string_metric():
    ex = Example("my raven that doesn't sleep does change . quest", "does my raven that doesn't sleep change ?")
    assert qf.qf_is_correct("does", ex)
    assert not qf.qf_is_correct("doesn't", ex)
    assert not qf.qf_is_correct("do", ex)


def test_ti_string_metric():
    ex = Example(
        "the yaks that some unicorn entertained applauded her salamanders . PRESENT",
        "the yaks that some unicorn entertains applaud her salamanders .",
    )
    assert ti.main_verb_index(ex.target.split()) == 6
    assert ti.ti_main_verb_correct(ex.target, ex)
    assert ti.ti_main_verb_correct("the yaks that some unicorn entertain applaud her salamanders .", ex)  # RC verb wrong
    assert not ti.ti_main_verb_correct("the yaks that some unicorn entertains applauds her salamanders .", ex)
    assert not ti.ti_main_verb_correct("the yaks that some unicorn entertains applauded her salamanders .", ex)
    assert not ti.ti_main_verb_correct("the yaks that some unicorn entertains applaud her .", ex)  # wrong shape
    simple = Example("my zebra accepted my quails by her quails . PRESENT", "my zebra accepts my quails by her quails .")
    assert ti.ti_main_verb_correct("my zebra accepts my quails by her quail .", simple)
    assert not ti.ti_main_verb_correct("my zebra accept my quails by her quails .", simple)


def test_dyck_string_metric():
    words = "(a (b b) (c (d d) c) a)".split()
    assert dyck.closing_pairs(words) == [(2, 1), (5, 4), (6, 3), (7, 0)]
    assert dyck.dyck_closing_correct("a)", words, 7)
    assert not dyck.dyck_closing_correct("c)", words, 7)


def _oracle(vocab: Vocab, answer: Callable[[list[str]], str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """A causal 'LM' whose prediction at every position is `answer(words so far)`."""

    def logits_fn(tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*tokens.shape, len(vocab))
        for b, row in enumerate(tokens.tolist()):
            for t in range(len(row)):
                prefix = vocab.decode(row[1 : t + 1])
                if "<pad>" not in prefix:
                    out[b, t, vocab.index[answer(prefix)]] = 1.0
        return out

    return logits_fn


def test_qf_evaluate_with_controlled_model(qf_data):
    vocab = qf.TASK.vocab

    def main_aux(prefix: list[str]) -> str:
        words = prefix[: prefix.index(".")] if "." in prefix else None
        return words[qf.main_aux_index(words)] if words and prefix[-1] == qf.QUEST else "do"

    def first_aux(prefix: list[str]) -> str:
        return next((w for w in prefix if w in qf.AUXILIARIES), "do")

    examples = qf_data["dev"][:60] + qf_data["gen"][:60]
    mixed = qf.TASK.evaluate(_oracle(vocab, main_aux), examples, batch_size=16)
    assert mixed["acc"] == 1.0 and mixed["first_aux_acc"] == 1.0
    gen = qf.TASK.evaluate(_oracle(vocab, first_aux), qf_data["gen"][:60], batch_size=16)
    assert gen == {"acc": 0.0, "first_aux_acc": 0.0, "linear_rule_rate": 1.0, "obj_rel_acc": 0.0, "subj_rel_acc": 0.0}

    def main_aux_after_subject_gap(prefix: list[str]) -> str:
        """Hierarchical on subject-gap relatives, linear on object-gap ones."""
        words = prefix[: prefix.index(".")] if "." in prefix else None
        if words and prefix[-1] == qf.QUEST and qf.subject_relative_gap(words) == "subj":
            return main_aux(prefix)
        return first_aux(prefix)

    gen_examples = qf_data["gen"][:200]
    gaps = [qf.subject_relative_gap(ex.input.split()) for ex in gen_examples]
    assert set(gaps) == {"subj", "obj"}, "every gen subject has a relative clause, of both kinds"
    split = qf.TASK.evaluate(_oracle(vocab, main_aux_after_subject_gap), gen_examples, batch_size=16)
    assert split["subj_rel_acc"] == 1.0 and split["obj_rel_acc"] == 0.0
    assert split["acc"] == pytest.approx(gaps.count("subj") / len(gaps))
    in_dist = [ex for ex in qf_data["dev"] if marker(ex) == qf.QUEST][:40]
    assert qf.TASK.evaluate(_oracle(vocab, first_aux), in_dist)["acc"] == 1.0


def test_ti_evaluate_with_controlled_model(ti_data):
    vocab = ti.TASK.vocab
    examples = ti_data["dev"][:30] + ti_data["gen"][:30]
    targets = {ex.input: ex.target.split() for ex in examples}

    def copy_target(prefix: list[str], corrupt: bool = False) -> str:
        """Continue with the gold target; `corrupt` swaps in another verb at the main-verb position."""
        marker_at = next((i for i, w in enumerate(prefix) if w in (ti.PAST, ti.PRESENT)), None)
        if marker_at is None:
            return "the"
        target, done = targets[" ".join(prefix[: marker_at + 1])], prefix[marker_at + 1 :]
        if len(done) == len(target):
            return "<eos>"
        word = target[len(done)]
        if corrupt and len(done) == ti.main_verb_index(target):
            return "applaud" if word != "applaud" else "applauds"
        return word

    perfect = ti.TASK.evaluate(_oracle(vocab, copy_target), examples, batch_size=7)
    assert perfect == {"acc": 1.0, "full_seq_acc": 1.0}
    broken = ti.TASK.evaluate(_oracle(vocab, lambda p: copy_target(p, corrupt=True)), examples, batch_size=7)
    assert broken["acc"] == 0.0 and broken["full_seq_acc"] == 0.0
    rambling = ti.TASK.evaluate(_oracle(vocab, lambda p: "the"), examples[:5])
    assert rambling == {"acc": 0.0, "full_seq_acc": 0.0}


def test_dyck_evaluate_with_controlled_model(dyck_data):
    vocab = dyck.TASK.vocab
    examples = dyck_data["dev"][:40] + dyck_data["gen"][:10]

    def top_of_stack(prefix: list[str]) -> str:
        stack: list[str] = []
        for w in prefix:
            if w.startswith("("):
                stack.append(w[1:])
            elif w.endswith(")"):
                stack.pop()
        return (stack[-1] if stack else "a") + ")"

    assert dyck.TASK.evaluate(_oracle(vocab, top_of_stack), examples, batch_size=8) == {"acc": 1.0, "acc_dist10": 1.0}
    pairs = [(ex.input.split(), c, o) for ex in examples for c, o in dyck.closing_pairs(ex.input.split())]
    expected = sum(w[c] == "a)" for w, c, _ in pairs) / len(pairs)
    far = [(w, c) for w, c, o in pairs if c - o >= 10]
    expected_far = sum(w[c] == "a)" for w, c in far) / len(far)
    always_a = dyck.TASK.evaluate(_oracle(vocab, lambda p: "a)"), examples, batch_size=8)
    assert always_a == pytest.approx({"acc": expected, "acc_dist10": expected_far})


# ---- full size ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("module", [qf, ti, dyck])
def test_full_size_generation_gives_every_split_its_size(module):
    data = module.generate(0)
    assert {split: len(exs) for split, exs in data.items()} == module.SIZES
