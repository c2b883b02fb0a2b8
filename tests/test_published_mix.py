"""The published structure mix: generated splits match McCoy et al.'s files, `--stats` reads any directory."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from grokking.cli import main
from grokking.config import RunConfig, preset_config
from grokking.errors import UserError
from grokking.store import RunDir
from grokking.tasks import dyck
from grokking.tasks import question_formation as qf
from grokking.tasks import tense_inflection as ti
from grokking.tasks.lm_data import Example
from grokking.tasks.published_mix import CELLS, REFERENCE, WORDS
from grokking.tasks.registry import get_lm_task
from grokking.tasks.structure_mix import Frames, Template, allocate, file_mix, mix_of, sampling_noise, tvd

TASKS = {"question": qf, "tense": ti}


@pytest.fixture(scope="module", params=["question", "tense"])
def full(request) -> tuple[str, dict[str, list[Example]]]:
    """Full-size splits of one task (about 4 s each here): the sizes the requirement is stated for."""
    return request.param, TASKS[request.param].generate(0)


def test_every_split_matches_the_published_mix(full):
    stem, data = full
    module = TASKS[stem]
    for split, examples in data.items():
        mix = mix_of([module.structure(ex) for ex in examples])
        name = f"{stem}.{REFERENCE[split]}"
        cells, words = tvd(mix.cells, CELLS[name]), tvd(mix.words, WORDS[name])
        if split == "dev":  # 1,000 lines: held to i.i.d. sampling noise, as the published dev file is
            assert cells < sampling_noise(CELLS[name], mix.n) and words < sampling_noise(WORDS[name], mix.n), split
        assert cells < 0.05 and words < 0.05, (split, cells, words)


def test_every_line_is_unique_within_and_across_splits(full):
    _, data = full
    inputs = [ex.input for examples in data.values() for ex in examples]
    assert len(set(inputs)) == len(inputs)


def test_split_rules_hold_at_full_size(full):
    stem, data = full
    module = TASKS[stem]
    for split, examples in data.items():
        cells = Counter(module.structure(ex)[0] for ex in examples)
        if stem == "question" and split != "gen":  # no relative clause on the subject of a question
            assert not any(s.startswith("RC") and m == qf.QUEST for s, _, m in cells), split
        if stem == "question" and split == "gen":
            assert all(s.startswith("RC") and not a.startswith("RC") and m == qf.QUEST for s, a, m in cells)
            for ex in examples[:1000]:  # parsed by the grammar: a sample keeps the test fast
                words = qf.declarative_words(ex)
                rc_aux, main_aux = words[qf.first_aux_index(words)], words[qf.main_aux_index(words)]
                assert rc_aux != main_aux and (rc_aux in qf.AUX["S"]) == (main_aux in qf.AUX["S"]), ex
        if stem == "tense":
            present = [ex for ex in examples if ex.input.endswith(ti.PRESENT)]
            conflicts = {_recent_noun_conflict(ti.sentence_words(ex)) for ex in present}
            assert conflicts == ({True} if split == "gen" else {False}), split
            assert split != "gen" or len(present) == len(examples)


def _recent_noun_conflict(past_words: list[str]) -> bool:
    """Independent of the generator: the subject noun (index 1) vs the last noun before the main verb."""
    verb = ti.main_verb_index(past_words)
    recent = [w for w in past_words[:verb] if w in ti.NOUN_NUMBER][-1]
    return ti.NOUN_NUMBER[recent] != ti.NOUN_NUMBER[past_words[1]]


def test_the_object_gap_share_of_qf_gen_is_the_published_third(full):
    stem, data = full
    if stem != "question":
        pytest.skip("question formation only")
    gaps = Counter(qf.subject_relative_gap(ex.input.split()) for ex in data["gen"])
    assert gaps["obj"] / len(data["gen"]) == pytest.approx((6.9 + 19.9 + 6.6) / 100.1, abs=0.005)


# ---- the grammar mix and old configs --------------------------------------------------------------------


def test_grammar_mix_is_the_rule_weight_sampler_with_its_old_cache_key():
    small = {"train": 2000, "dev": 100, "test": 1000, "gen": 1000}
    for module, name in ((qf, "question.test"), (ti, "tense.test")):
        assert module.TASKS["grammar"].params == {"version": 1, "sizes": module.SIZES}  # old caches still load
        assert module.TASKS["published"] is module.TASK and module.TASK.params["mix"] == "published"
        grammar = module.generate(1, small, mix="grammar")
        # By rule weights half the sentences are intransitive (published: 10% QF, 22% TI), far from the table.
        assert tvd(mix_of([module.structure(ex) for ex in grammar["test"]]).cells, CELLS[name]) > 0.15
    assert get_lm_task("question-formation", "grammar") is qf.TASKS["grammar"]
    assert get_lm_task("dyck", "grammar") is dyck.TASK  # one mix only


def test_a_config_without_mix_reads_as_grammar_and_a_new_one_defaults_to_published(tmp_path):
    cfg = preset_config("qf-cpu")
    assert cfg.task.mix == "published"
    old = json.loads(cfg.to_json())
    del old["task"]["mix"]
    assert RunConfig.from_dict(old).task.mix == "grammar"
    run = RunDir(tmp_path / "old-run")
    run.path.mkdir()
    run.config_path.write_text(json.dumps(old))
    assert run.read_config().task.mix == "grammar"
    assert RunConfig.from_dict(json.loads(cfg.to_json())).task.mix == "published"
    cfg.set("mix", "grammer")
    with pytest.raises(UserError, match="mix must be one of .*did you mean 'grammar'"):
        cfg.validate()


# ---- --stats --------------------------------------------------------------------------------------------

HAND_MADE = [  # (line, cell, words per declarative), cells worked out by hand
    ("the walrus does giggle . decl\tthe walrus does giggle .", ("none", "intransitive", "decl"), 4),
    ("the walrus does giggle . quest\tdoes the walrus giggle ?", ("none", "intransitive", "quest"), 4),
    ("her yaks near the newt don't admire your zebras who do read . decl\t"
     "her yaks near the newt don't admire your zebras who do read .", ("PP", "RC-subj-gap", "decl"), 12),
    ("my raven that her newts don't amuse does accept some yak . decl\t"
     "my raven that her newts don't amuse does accept some yak .", ("RC-obj-gap", "none", "decl"), 11),
]  # fmt: skip


def test_stats_reproduce_a_hand_computed_mix(tmp_path, monkeypatch, capsys):
    (tmp_path / "question.test").write_text("\n".join(line for line, _, _ in HAND_MADE) + "\n\n")
    mix = file_mix(qf.TASK, tmp_path / "question.test")
    assert mix.cells == Counter(cell for _, cell, _ in HAND_MADE)
    assert mix.words == Counter(n for _, _, n in HAND_MADE) == Counter({4: 2, 11: 1, 12: 1})
    # TVD = 1 - sum of min(here, published): each hand-made cell holds 1/4, more than its published share
    table = CELLS["question.test"]
    expected_cells = 1 - sum(table[c] for _, c, _ in HAND_MADE) / sum(table.values())
    words = WORDS["question.test"]
    expected_words = 1 - (words[4] + words[11] + words[12]) / sum(words.values())
    assert expected_cells == pytest.approx(1 - (0.3 + 0.3 + 3.2 + 2.0) / 99.8)
    monkeypatch.setattr(sys, "argv", ["grokking", "data", "question-formation", "--stats", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line.split() for line in out if line.startswith("test "))
    assert row[:3] == ["test", "4", "question.test"]
    assert float(row[3]) == pytest.approx(expected_cells, abs=5e-4) and float(row[4]) == pytest.approx(expected_words, abs=5e-4)


@pytest.mark.parametrize("bad, why", [
    ("the walrus giggle does . decl\tthe walrus giggle does .", "not a sentence of this grammar"),
    ("the walrus does giggle decl\tthe walrus does giggle .", "expected '<declarative> . decl|quest'"),
    ("the walrus does giggle . PAST\tthe walrus does giggle .", "not in the vocabulary"),
])  # fmt: skip
def test_stats_on_a_malformed_line_name_file_and_line_in_one_line(tmp_path, monkeypatch, capsys, bad, why):
    good = HAND_MADE[0][0]
    (tmp_path / "question.gen").write_text(f"{good}\n\n{bad}\n")
    monkeypatch.setattr(sys, "argv", ["grokking", "data", "question-formation", "--stats", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "question.gen:3: " in err and why in err


def test_stats_refuse_a_directory_without_data(tmp_path):
    from grokking.tasks.structure_mix import stats_report

    with pytest.raises(UserError, match="none of question.train"):
        stats_report(qf.TASK, tmp_path)


def test_dyck_stats_count_unseen_structures_against_train(tmp_path):
    task = dyck.make_task(k=3, m=3, sizes={"train": 2, "dev": 1, "gen": 2})
    (tmp_path / "dyck.train").write_text("(a a) (b (c c) b)\n(a (a a) a)\n")
    (tmp_path / "dyck.gen").write_text("(a (b (c c) b) a)\n(a a) (b b)\n")
    rows = {line.split()[0]: line.split() for line in dyck.stats_report(task, tmp_path, n_reference=50)[1:3]}
    assert rows["train"][1] == "2" and rows["train"][-2:] == ["0.0%", "-"]
    assert rows["gen"][1] == "2" and rows["gen"][-2:] == ["50.0%", "0.0%"]  # ((())) is new; ()() has only seen segments
    assert rows["gen"][4] == "2.00"  # mean of max depths 3 and 1
    (tmp_path / "dyck.gen").write_text("(a a)\n(a (b (c (a a) c) b) a)\n")
    with pytest.raises(UserError, match=r"dyck\.gen:2: not a balanced string of depth at most 3"):
        dyck.stats_report(task, tmp_path, n_reference=50)


# ---- the machinery ---------------------------------------------------------------------------------------


def test_allocation_fills_full_templates_and_moves_the_rest():
    a, b, c = (Template("none", x, "decl") for x in ("none", "PP", "intransitive"))
    assert allocate({a: 0.5, b: 0.5}, 10, {a: 100, b: 100}) == {a: 5, b: 5}
    assert allocate({a: 0.5, b: 0.25, c: 0.25}, 12, {a: 2, b: 100, c: 100}) == {a: 2, b: 5, c: 5}
    with pytest.raises(ValueError, match="exhausted"):
        allocate({a: 1.0}, 3, {a: 2})


def test_frames_enumerate_each_line_once():
    frames = Frames([(("a", "b"), ("x",)), (("c",), ("x", "y", "z")), (("a", "b"), ("x",))])  # a repeated frame
    lines = [tuple(frames.words(i)) for i in range(frames.capacity)]
    assert frames.capacity == 5 and len(set(lines)) == 5
    assert set(lines) == {("a", "x"), ("b", "x"), ("c", "x"), ("c", "y"), ("c", "z")}
