"""Known-answer tests of the structural-grokking analyses: weight norms, attention entropy, tree projections."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from grokking.analysis.norms import weight_norms
from grokking.analysis.structural import attention_entropy, head_averaged_attention_entropy
from grokking.analysis.tree_projection import (
    Tree,
    bracket_f1,
    cky_tree,
    context_free_states,
    greedy_tree,
    left_branching,
    render,
    right_branching,
    sci_chart,
    sci_charts,
    sci_from_span_vectors,
    span_vectors,
    tree_from_spans,
    tree_measures,
    tree_projection_report,
    tree_score,
    tree_spans,
    tscore,
)
from grokking.config import ModelConfig
from grokking.model import Transformer
from grokking.tasks import question_formation as qf
from grokking.tasks.grammar import Sampler


def make_model(n_layers: int = 2, d_model: int = 32, n_heads: int = 2, seed: int = 0, **overrides) -> Transformer:
    cfg = ModelConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, d_mlp=4 * d_model,
                      normalization="post", positional="sinusoidal", attn_bias=True, unembed_bias=True, init="tl",
                      d_vocab=len(qf.TASK.vocab), d_vocab_out=len(qf.TASK.vocab), n_ctx=24)  # fmt: skip
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    return Transformer(cfg).eval()


def qf_sentences(n: int, seed: int = 0) -> list[str]:
    """Grammar-drawn QF declaratives, without `.` (cheap: no data files)."""
    rng, sampler = random.Random(seed), Sampler(qf.GRAMMAR)
    return [" ".join(sampler.sample(rng).leaves[:-1]) for _ in range(n)]


def random_chart(n: int, gen: torch.Generator) -> torch.Tensor:
    chart = torch.rand(n, n, generator=gen, dtype=torch.float64)
    return chart.masked_fill(~torch.ones(n, n, dtype=torch.bool).triu(), float("nan"))


def all_trees(i: int, j: int) -> list[Tree]:
    if i == j:
        return [i]
    return [(left, right) for k in range(i, j) for left in all_trees(i, k) for right in all_trees(k + 1, j)]


# ---- tree projection: decoding on known charts -----------------------------------------------------------------


def compositional_span_vectors(tree_spans_: set[tuple[int, int]], n: int, d: int = 16, seed: int = 0):
    """Span vectors exactly compositional along a tree: a constituent (or word) has the same vector in and
    out of context; any other span gets a context term for every constituent it crosses."""
    gen = torch.Generator().manual_seed(seed)
    context_free = torch.randn(n, n, d, generator=gen)
    context = {span: torch.randn(d, generator=gen) for span in tree_spans_}
    contextual = context_free.clone()
    for i, j in itertools.combinations_with_replacement(range(n), 2):
        crossed = [c for (a, b), c in context.items() if a < i <= b < j or i < a <= j < b]
        if crossed:
            contextual[i, j] += torch.stack(crossed).sum(0)
    return contextual, context_free


def test_compositional_representations_project_onto_their_tree():
    golds = [qf.gold_parse(s) for s in qf_sentences(30)]
    induced, gold_spans = [], []
    for seed, gold in enumerate(golds):
        n = len(gold.words)
        chart = sci_from_span_vectors(*compositional_span_vectors(gold.spans, n, seed=seed))
        assert all(chart[i, j] == pytest.approx(1.0) for i, j in gold.spans)
        greedy, cky = greedy_tree(chart), cky_tree(chart)
        assert greedy == cky == tree_from_spans(gold.spans, n)
        induced.append(tree_spans(greedy))
        gold_spans.append(gold.spans)
    assert bracket_f1(induced, gold_spans) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_cky_is_exact_and_never_worse_than_greedy():
    gen = torch.Generator().manual_seed(0)
    for n in range(2, 8):  # brute force over all Catalan(n - 1) trees
        for _ in range(10):
            chart = random_chart(n, gen)
            scores = [tree_score(chart, t, normalize=False) for t in all_trees(0, n - 1)]
            assert tree_score(chart, cky_tree(chart), normalize=False) == pytest.approx(max(scores))
    rng, strictly_better = random.Random(0), 0
    for _ in range(300):
        chart = random_chart(rng.randint(2, 16), gen)
        cky, greedy = (tree_score(chart, decode(chart), normalize=False) for decode in (cky_tree, greedy_tree))
        assert cky >= greedy - 1e-12
        strictly_better += cky > greedy + 1e-9
    assert strictly_better > 0  # greedy is not exact, so the comparison has teeth


def test_split_score_is_summed_constituent_score():
    """CKY's objective: summed split scores = summed SCI of all constituents minus the root (leaves are constants)."""
    chart = random_chart(6, torch.Generator().manual_seed(1))
    for tree in all_trees(0, 5):
        constituents = sum(chart[i, j] for i, j in tree_spans(tree)) + chart.diagonal().sum() - chart[0, 5]
        assert tree_score(chart, tree, normalize=False) == pytest.approx(constituents.item())


def test_tscore_by_hand():
    nan = float("nan")
    chart = torch.tensor([[1.0, 0.2, 1.0], [nan, 1.0, 0.8], [nan, nan, 1.0]])
    # root: k=0 scores 1 + 0.8 = 1.8, k=1 scores 0.2 + 1 = 1.2; the mean split is 1.5, so +0.3. (1, 2): one split, +0.
    assert greedy_tree(chart) == (0, (1, 2))
    assert tree_score(chart, (0, (1, 2))) == pytest.approx(0.3)
    assert tree_score(chart, ((0, 1), 2)) == pytest.approx(-0.3)
    assert tscore([chart, chart.tolist()]) == pytest.approx(0.3)


def released_tscore_draw(chart: list[list[float]], rng: random.Random) -> float:
    """The released code's estimator (`tree_projection` with `normalize=True`), written out: greedy
    top-down splits, and at every node of >= 2 words the score of ONE uniformly random split subtracted."""

    def walk(i: int, j: int) -> float:
        if i == j:
            return 0.0
        best = max(range(i, j), key=lambda k: chart[i][k] + chart[k + 1][j])
        rand = rng.randrange(i, j)
        gain = chart[i][best] + chart[best + 1][j] - (chart[i][rand] + chart[rand + 1][j])
        return walk(i, best) + walk(best + 1, j) + gain

    return walk(0, len(chart) - 1)


def test_tscore_is_the_expectation_of_the_released_single_draw_estimator():
    # Same scale as the paper's numbers: the lab subtracts the mean over splits where the released code
    # subtracts one random split, so the released value scatters around the lab's and averages to it.
    chart = random_chart(9, torch.Generator().manual_seed(3)).tolist()
    rng = random.Random(0)
    draws = [released_tscore_draw(chart, rng) for _ in range(20_000)]
    mean = sum(draws) / len(draws)
    spread = (sum((d - mean) ** 2 for d in draws) / len(draws)) ** 0.5
    assert abs(mean - tscore([chart])) < 4 * spread / len(draws) ** 0.5  # 4 standard errors
    assert spread > 0.01  # one draw per sentence is noisy; the expectation is not


def test_bracket_f1_by_hand():
    gold = [tree_spans(((0, 1), (2, 3))), tree_spans((0, (1, 2))), {(0, 1), (0, 2)}]
    pred = [tree_spans(right_branching(4)), tree_spans(left_branching(3)), {(0, 1)}]
    # hits 2 + 1 + 1 = 4 of 6 predicted and 7 gold brackets: P = 2/3, R = 4/7, F1 = 8/13.
    assert bracket_f1(pred, gold) == pytest.approx({"precision": 2 / 3, "recall": 4 / 7, "f1": 8 / 13})
    assert bracket_f1(gold, gold)["f1"] == 1.0


def test_tree_helpers():
    gold = qf.gold_parse("the walrus does giggle")
    assert gold.spans == {(0, 1), (2, 3), (0, 3)}
    tree = tree_from_spans(gold.spans, 4)
    assert tree == ((0, 1), (2, 3)) and tree_spans(tree) == tree_spans(gold.nested) == gold.spans
    assert render(tree, gold.words) == gold.brackets == "((the walrus) (does giggle))"
    assert right_branching(3) == (0, (1, 2)) and left_branching(3) == ((0, 1), 2)
    with pytest.raises(ValueError):
        tree_from_spans({(0, 3), (1, 2)}, 4)


# ---- tree projection: the model path ---------------------------------------------------------------------------


def span_masked_vectors(model: Transformer, tokens: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Reference: one forward pass for span (i, j), whose tokens may see only themselves and `<sos>`."""
    keys = torch.arange(tokens.shape[-1])
    allowed = (keys == 0) | ((keys >= i + 1) & (keys <= j + 1))
    mask = allowed.expand(tokens.shape[-1], -1)[None]
    return model.residual_stream(tokens[None], mask)[0, i + 1 : j + 2].sum(0)


@torch.no_grad()
def test_span_mask_isolates_span_and_matches_one_pass_per_span():
    model = make_model(n_layers=2)
    gen = torch.Generator().manual_seed(0)
    n = 7
    tokens = torch.cat([torch.tensor([1]), torch.randint(3, len(qf.TASK.vocab), (n,), generator=gen)])
    contextual, context_free = span_vectors(context_free_states(model, tokens[None]))
    full = model.residual_stream(tokens[None])[0]
    for i, j in itertools.combinations_with_replacement(range(n), 2):
        torch.testing.assert_close(context_free[0, i, j], span_masked_vectors(model, tokens, i, j), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(contextual[0, i, j], full[i + 1 : j + 2].sum(0), atol=1e-4, rtol=1e-4)
    for i, j in [(2, 4), (1, 1), (3, 6)]:
        other = tokens.clone()
        outside = [p for p in range(1, n + 1) if not i + 1 <= p <= j + 1]
        other[outside] = torch.randint(3, len(qf.TASK.vocab), (len(outside),), generator=gen)
        ctx2, cf2 = span_vectors(context_free_states(model, other[None]))
        torch.testing.assert_close(cf2[0, i, j], context_free[0, i, j], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ctx2[0, i, j], contextual[0, i, j], atol=1e-3)  # the context did matter
    chart = sci_chart(model, tokens)
    torch.testing.assert_close(chart[0], torch.ones(n, dtype=torch.float64))  # spans from word 0 see no outside
    assert chart.tril(-1).isnan().sum() == n * (n - 1) // 2


def test_sci_charts_batches_like_single_sentences():
    model = make_model(n_layers=2)
    vocab = qf.TASK.vocab
    seqs = [[vocab.sos_id, *vocab.encode(s.split())] for s in qf_sentences(12, seed=3)]
    batched = sci_charts(model, seqs, batch_size=20)
    for seq, chart in zip(seqs, batched):
        torch.testing.assert_close(chart, sci_chart(model, torch.tensor(seq)), equal_nan=True, atol=1e-6, rtol=1e-6)


def test_model_without_attention_output_is_context_free():
    """W_O = 0: no information moves between positions, so every span is context-invariant and tscore is 0."""
    model = make_model(n_layers=2)
    for block in model.blocks:
        block.attn.W_O.data.zero_()
    vocab = qf.TASK.vocab
    sentences = qf_sentences(5, seed=1)
    chart = sci_chart(model, torch.tensor([vocab.sos_id, *vocab.encode(sentences[0].split())]))
    upper = ~chart.isnan()
    torch.testing.assert_close(chart[upper], torch.ones(int(upper.sum()), dtype=torch.float64))
    assert tree_measures(model, sentences, vocab, qf.gold_parse)["tscore"] == pytest.approx(0.0, abs=1e-6)


def test_tree_measures_and_report_on_a_random_model():
    model = make_model(n_layers=2)
    sentences = qf_sentences(20, seed=2)
    out = tree_measures(model, [s + " . decl" for s in sentences], qf.TASK.vocab, qf.gold_parse, batch_size=64)
    golds = [qf.gold_parse(s) for s in sentences]
    right = bracket_f1([tree_spans(right_branching(len(g.words))) for g in golds], [g.spans for g in golds])["f1"]
    assert out["tparseval_right_branching"] == pytest.approx(right)
    assert 0 <= out["tparseval"] <= 1 and 0 <= out["tparseval_cky"] <= 1 and out["tscore"] >= 0
    report = tree_projection_report(model, sentences[0], qf.TASK.vocab, qf.gold_parse)
    assert report["brackets"]["gold"] == golds[0].brackets and report["tparseval"]["gold"] == 1.0


# ---- attention entropy --------------------------------------------------------------------------------------


def test_uniform_attention_has_entropy_log_prefix_length():
    model = make_model(n_layers=3, n_heads=2)
    for block in model.blocks:
        for name in ("W_Q", "W_K", "b_Q", "b_K"):
            getattr(block.attn, name).data.zero_()
    tokens = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 0, 0]])  # right-padded: 5 and 3 real positions
    out = attention_entropy(model, tokens, pad_id=0, batch_size=1)
    expected = (sum(math.log(t + 1) for t in range(5)) + sum(math.log(t + 1) for t in range(3))) / 8
    for key in [f"attn_entropy_l{l}h{h}" for l in range(3) for h in range(2)] + ["attn_entropy_l0", "attn_entropy"]:
        assert out[key] == pytest.approx(expected)
    assert out["attn_sparsity"] == pytest.approx(-expected)


def test_entropy_of_a_single_key_is_zero():
    out = attention_entropy(make_model(n_layers=1), torch.tensor([[1], [1]]))
    assert out["attn_entropy"] == pytest.approx(0.0, abs=1e-9)


def two_head_model() -> tuple[Transformer, int]:
    """1 layer; head 0 attends only to `<sos>`, head 1 uniformly to the word token `t` (returned)."""
    model = make_model(n_layers=1, n_heads=2, d_model=32, positional="learned")
    t = qf.TASK.vocab.index["the"]
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.W_E[qf.TASK.vocab.sos_id, 0] = 1.0
        model.embed.W_E[t, 1] = 1.0
        attn = model.blocks[0].attn
        attn.b_Q[:, 0] = 1.0
        attn.W_K[0, 0, 0] = 100.0  # head 0: keys with the `<sos>` dim score 100 / sqrt(16) = 25
        attn.W_K[1, 1, 0] = 100.0  # head 1: keys with the word dim
    return model, t


def test_head_averaged_entropy_is_the_released_quantity_and_differs_from_the_per_head_one():
    model, t = two_head_model()
    sos = qf.TASK.vocab.sos_id
    sequences = [[sos, t, t, t], [sos, t]]
    # At query q >= 1 head 0 is one-hot on <sos>, head 1 uniform over q copies of t: their average puts
    # 1/2 on <sos> and 1/(2q) on each t, entropy ln 2 + (ln q)/2; at q = 0 both see only <sos> (0).
    per_sentence = [sum(math.log(2) + math.log(q) / 2 for q in range(1, len(s))) for s in sequences]
    out = head_averaged_attention_entropy(model, sequences, batch_size=1)
    assert out["attn_entropy_headavg"] == pytest.approx(sum(per_sentence) / 2, abs=1e-6)
    assert out["attn_sparsity_headavg"] == -out["attn_entropy_headavg"]
    # The lab's per-head measure of the same sequences: each head's own entropy, mean over the 6 real
    # query tokens: head 0 gives 0, head 1 ln q at each q.
    lab = attention_entropy(model, torch.tensor([[sos, t, t, t], [sos, t, 0, 0]]), batch_size=1)
    head1 = (math.log(1) + math.log(2) + math.log(3) + math.log(1)) / 6
    assert lab["attn_entropy_l0h0"] == pytest.approx(0.0, abs=1e-6)
    assert lab["attn_entropy_l0h1"] == pytest.approx(head1, abs=1e-6)
    assert lab["attn_entropy"] == pytest.approx(head1 / 2, abs=1e-6)
    assert out["attn_entropy_headavg"] > 5 * lab["attn_entropy"]  # not "the same up to the mean length"


def test_head_averaged_entropy_of_uniform_attention_sums_log_prefix_lengths():
    model = make_model(n_layers=3, n_heads=2)
    for block in model.blocks:
        for name in ("W_Q", "W_K", "b_Q", "b_K"):
            getattr(block.attn, name).data.zero_()
    sequences = [[1, 5, 6, 7, 8], [1, 9, 10]]
    out = head_averaged_attention_entropy(model, sequences, batch_size=1)
    expected = (sum(math.log(q + 1) for q in range(5)) + sum(math.log(q + 1) for q in range(3))) / 2
    assert out["attn_entropy_headavg"] == pytest.approx(expected)
    assert head_averaged_attention_entropy(model, sequences, batch_size=2) == pytest.approx(out)  # padding changes nothing


# ---- weight norms ----------------------------------------------------------------------------------------------


def test_weight_norms_of_a_hand_set_model():
    model = make_model(n_layers=2, d_model=4, n_heads=1, d_head=2, d_mlp=3, attn_bias=False, unembed_bias=False,
                       d_vocab=5, d_vocab_out=5)  # fmt: skip
    for name, param in model.named_parameters():
        param.data.fill_(1.0 if name.startswith("blocks.0.") else 2.0 if name.startswith("blocks.1.") else 3.0)
    # A block: W_Q, W_K, W_V 3 x (1*4*2), W_O 1*2*4, W_in 4*3, b_in 3, W_out 3*4, b_out 4, two LayerNorms 2 x (4 + 4)
    per_block = 3 * 8 + 8 + 12 + 3 + 12 + 4 + 16
    assert per_block == 79
    embeddings = 5 * 4 + 4 * 5  # W_E and W_U (sinusoidal positions and zero-bias buffers are not parameters)
    out = weight_norms(model)
    assert out["weight_norm_layer0"] == pytest.approx(math.sqrt(79))
    assert out["weight_norm_layer1"] == pytest.approx(2 * math.sqrt(79))
    assert out["weight_norm"] == pytest.approx(math.sqrt(79 + 4 * 79 + 9 * embeddings))
    assert out["weight_norm_depth_normalized"] == pytest.approx(math.sqrt((79 + 4 * 79) / 2))
    assert out["weight_norm/blocks.1.attn.W_Q"] == pytest.approx(2 * math.sqrt(8))
    assert out["weight_norm/embed.W_E"] == pytest.approx(3 * math.sqrt(20))


def test_depth_normalised_norm_does_not_depend_on_depth_at_init():
    shallow, deep = weight_norms(make_model(n_layers=2, d_model=64)), weight_norms(make_model(n_layers=6, d_model=64))
    assert deep["weight_norm_depth_normalized"] == pytest.approx(shallow["weight_norm_depth_normalized"], rel=0.01)
    assert deep["weight_norm"] > 1.4 * shallow["weight_norm"]
