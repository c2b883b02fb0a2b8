"""Tree projections (Murty et al., ICLR 2023) of a causal LM, as used for structural grokking (ACL 2023).

A span's *contextual* vector is the sum of the final-layer vectors over its words in the full
sentence; its *context-free* vector is the same sum when the span's tokens may attend only to
themselves and `<sos>`, at every layer. Their cosine is the span contextual invariance (SCI). A
model is tree-structured when some binary tree has context-invariant constituents: `tscore` measures
how much better the best tree scores than random splits, `tparseval` how well it matches the grammar.

Conventions:
- A sentence is encoded `<sos> w_0 .. w_{n-1}`: `<sos>` at position 0, word i at position i + 1. It
  is the declarative input without the final `.` and task marker, as in the released code, so that
  chart indices are the word indices of the gold spans (`GoldTree.spans`).
- Charts are [n, n] tensors, `chart[i, j]` = SCI of words i..j (inclusive) for i <= j, NaN below.
- Trees are nested pairs with word indices as leaves, e.g. `((0, 1), (2, 3))`; `tree_spans` (grammar.py) turns any
  nested pairs (word leaves too, like `GoldTree.nested`) into inclusive spans of >= 2 words, root
  included, and `tree_from_spans` goes back.

Batching: in a causal model, position p of span (i, j) sees only tokens 0 and i+1..p, whatever j is.
So one masked row per *start* i (keys `<sos>` and positions >= i+1) holds the context-free states of
every span (i, j) at once, exactly as one row per span would; and the row of start 0 is the
unmasked sentence, i.e. the contextual states. A sentence of n words costs n rows, not n(n+1)/2 + 1,
and many sentences of the same length run in one forward pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from grokking.model import Transformer, eval_mode
from grokking.tasks.grammar import GoldTree, tree_spans
from grokking.tasks.lm_data import Vocab

Span = tuple[int, int]
Tree = Union[int, tuple["Tree", "Tree"]]
Chart = list[list[float]]  # a chart as nested lists: ~50x faster to index in the Python decoders

# ---- SCI charts --------------------------------------------------------------------------------------


def start_masks(n_words: int, device: torch.device | str = "cpu") -> Tensor:
    """[n, 1+n, 1+n] bool: row i lets every query see `<sos>` and positions >= i+1 (causality does the rest)."""
    keys = torch.arange(n_words + 1, device=device)
    allowed = (keys[None, :] >= keys[1:, None]) | (keys == 0)  # [start, key]
    return allowed[:, None, :].expand(n_words, n_words + 1, n_words + 1)


def context_free_states(model: Transformer, tokens: Tensor) -> Tensor:
    """Final-layer states [B, start, pos, d] under each start's mask, for B sentences of n words ([B, 1+n])."""
    batch, length = tokens.shape
    n = length - 1
    rows = tokens.repeat_interleave(n, dim=0)
    masks = start_masks(n, tokens.device).repeat(batch, 1, 1)
    return model.residual_stream(rows, masks).view(batch, n, length, -1)


def span_sum_matrix(n_words: int, device: torch.device | str = "cpu") -> Tensor:
    """[i, j, pos] 0/1: which positions (word k at k + 1) make up span (i, j); all zero for i > j."""
    word = torch.arange(n_words, device=device)
    inside = (word[:, None, None] <= word[None, None, :]) & (word[None, None, :] <= word[None, :, None])
    return F.pad(inside.float(), (1, 0))  # position 0 (`<sos>`) is in no span


def span_vectors(states: Tensor) -> tuple[Tensor, Tensor]:
    """Contextual and context-free span vectors [B, i, j, d] from `context_free_states` output."""
    sums = span_sum_matrix(states.shape[1], states.device).to(states.dtype)
    contextual = torch.einsum("ijp,bpd->bijd", sums, states[:, 0])
    context_free = torch.einsum("ijp,bipd->bijd", sums, states)
    return contextual, context_free


def sci_from_span_vectors(contextual: Tensor, context_free: Tensor) -> Tensor:
    """Cosine of contextual and context-free vectors [..., i, j, d] -> chart [..., i, j] (NaN for i > j)."""
    chart = F.cosine_similarity(contextual.double(), context_free.double(), dim=-1)
    n = chart.shape[-1]
    upper = torch.ones(n, n, dtype=torch.bool, device=chart.device).triu()
    return chart.masked_fill(~upper, float("nan"))


def sci_chart(model: Transformer, tokens: Tensor) -> Tensor:
    """SCI charts [B, n, n] of sentences `<sos> w_0..w_{n-1}` [B, 1+n] of one length ([n, n] for [1+n]).

    One masked forward pass of B * n rows; dropout is off and no gradients are kept.
    """
    if tokens.dim() == 1:
        return sci_chart(model, tokens[None])[0]
    with eval_mode(model):
        states = context_free_states(model, tokens.to(next(model.parameters()).device))
        return sci_from_span_vectors(*span_vectors(states)).cpu()


def sci_charts(model: Transformer, sequences: Sequence[Sequence[int]], batch_size: int = 512) -> list[Tensor]:
    """SCI charts of sentences of any lengths (each `<sos>` + words), in input order.

    Sentences are grouped by length (no padding) and each forward pass takes at most `batch_size` rows
    (a sentence of n words is n rows; a longer sentence still goes alone).
    """
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, seq in enumerate(sequences):
        by_length[len(seq)].append(index)
    charts: list[Tensor | None] = [None] * len(sequences)
    for length, indices in by_length.items():
        per_pass = max(1, batch_size // max(1, length - 1))
        for start in range(0, len(indices), per_pass):
            chunk = indices[start : start + per_pass]
            tokens = torch.tensor([list(sequences[i]) for i in chunk], dtype=torch.long)
            for i, chart in zip(chunk, sci_chart(model, tokens)):
                charts[i] = chart
    return charts  # type: ignore[return-value]


# ---- trees ---------------------------------------------------------------------------------------------


def tree_from_spans(spans: set[Span], n_words: int) -> Tree:
    """The binary tree over words 0..n-1 whose internal nodes are exactly `spans` (which must be one)."""

    def build(i: int, j: int) -> Tree:
        if i == j:
            return i
        splits = [k for k in range(i, j) if (i == k or (i, k) in spans) and (k + 1 == j or (k + 1, j) in spans)]
        if (i, j) not in spans or len(splits) != 1:
            raise ValueError(f"spans are not a binary bracketing of {n_words} words (at ({i}, {j}))")
        return build(i, splits[0]), build(splits[0] + 1, j)

    tree = build(0, n_words - 1)
    if tree_spans(tree) != spans:
        raise ValueError("spans contain brackets outside the tree they define")
    return tree


def right_branching(n_words: int) -> Tree:
    tree: Tree = n_words - 1
    for i in range(n_words - 2, -1, -1):
        tree = (i, tree)
    return tree


def left_branching(n_words: int) -> Tree:
    tree: Tree = 0
    for i in range(1, n_words):
        tree = (tree, i)
    return tree


def render(tree: Tree, words: Sequence[str]) -> str:
    """Published bracket style, e.g. `((the walrus) (does giggle))`."""
    if isinstance(tree, int):
        return words[tree]
    return f"({render(tree[0], words)} {render(tree[1], words)})"


# ---- decoding ------------------------------------------------------------------------------------------


def _as_lists(chart: Tensor | Chart) -> Chart:
    return chart.tolist() if isinstance(chart, Tensor) else chart


def greedy_tree(chart: Tensor | Chart) -> Tree:
    """The released code's decoder: top-down, split (i, j) at the first k maximising s(i,k) + s(k+1,j)."""
    s = _as_lists(chart)

    def build(i: int, j: int) -> Tree:
        if i == j:
            return i
        k = max(range(i, j), key=lambda k: s[i][k] + s[k + 1][j])  # max() keeps the first of ties
        return build(i, k), build(k + 1, j)

    return build(0, len(s) - 1)


def cky_tree(chart: Tensor | Chart) -> Tree:
    """The exact maximiser over binary trees of the summed SCI of all constituents.

    Leaves and root are in every tree, so this is the same as maximising the sum of split scores
    s(i,k) + s(k+1,j) over internal nodes, the objective the greedy decoder climbs one node at a time.
    """
    s = _as_lists(chart)
    n = len(s)
    best = [[0.0] * n for _ in range(n)]
    split = [[0] * n for _ in range(n)]
    for width in range(1, n):
        for i in range(n - width):
            j = i + width
            k = max(range(i, j), key=lambda k: s[i][k] + s[k + 1][j] + best[i][k] + best[k + 1][j])
            best[i][j], split[i][j] = s[i][k] + s[k + 1][j] + best[i][k] + best[k + 1][j], k

    def build(i: int, j: int) -> Tree:
        return i if i == j else (build(i, split[i][j]), build(split[i][j] + 1, j))

    return build(0, n - 1)


def tree_score(chart: Tensor | Chart, tree: Tree, normalize: bool = True) -> float:
    """Sum over internal nodes (i, j) split at k of s(i,k) + s(k+1,j), minus, with `normalize`, the
    expected score of a uniformly random split of (i, j): the mean over k' of s(i,k') + s(k'+1,j).

    Normalised, this is one sentence's tscore (the released code draws one random split per node;
    the expectation gives the same mean without the noise).
    """
    s = _as_lists(chart)

    def walk(node: Tree, i: int) -> tuple[int, float]:
        if isinstance(node, int):
            return i, 0.0
        k, left = walk(node[0], i)
        j, right = walk(node[1], k + 1)
        score = s[i][k] + s[k + 1][j]
        if normalize:
            score -= sum(s[i][m] + s[m + 1][j] for m in range(i, j)) / (j - i)
        return j, left + right + score

    return walk(tree, 0)[1]


def tscore(charts: Sequence[Tensor | Chart], decode: Callable[[Chart], Tree] = greedy_tree) -> float:
    """Mean over sentences of the normalised `tree_score` of the decoded tree (paper: greedy decoding)."""
    lists = [_as_lists(c) for c in charts]
    return sum(tree_score(s, decode(s)) for s in lists) / len(lists)


def bracket_f1(predicted: Sequence[set[Span]], gold: Sequence[set[Span]]) -> dict[str, float]:
    """Corpus-level bracketing precision/recall/F1 (tparseval): matches pooled over sentences, then
    divided by the pooled predicted and gold counts, as the released `get_parsing_accuracy`."""
    hits = sum(len(p & g) for p, g in zip(predicted, gold, strict=True))
    n_pred, n_gold = sum(map(len, predicted)), sum(map(len, gold))
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


# ---- convenience: one call per checkpoint ----------------------------------------------------------------

GoldFn = Callable[[str], GoldTree]


def _encode(gold: GoldTree, vocab: Vocab) -> list[int]:
    return [vocab.sos_id, *vocab.encode(gold.words)]


def tree_measures(model: Transformer, sentences: Sequence[str], vocab: Vocab, gold_fn: GoldFn, batch_size: int = 512) -> dict[str, float]:
    """tscore and tparseval of `model` on declarative sentences (a trailing `.`/marker is dropped by `gold_fn`).

    `gold_fn` is a task's `gold_parse`; its `words` are what the model sees, so gold and induced spans
    index the same words. Keys: `tscore` (greedy trees, the paper's), `tscore_cky`, `tparseval`
    (greedy trees' bracketing F1), `tparseval_cky`, `tparseval_right_branching`,
    `tparseval_left_branching`, and `sci_mean` (mean SCI over multi-word spans).
    """
    golds = [gold_fn(s) for s in sentences]
    charts = [c.tolist() for c in sci_charts(model, [_encode(g, vocab) for g in golds], batch_size)]
    greedy = [greedy_tree(c) for c in charts]
    cky = [cky_tree(c) for c in charts]
    gold_spans = [g.spans for g in golds]
    lengths = [len(g.words) for g in golds]
    multi = [c[i][j] for c in charts for i in range(len(c)) for j in range(i + 1, len(c))]
    return {
        "tscore": sum(tree_score(c, t) for c, t in zip(charts, greedy)) / len(charts),
        "tscore_cky": sum(tree_score(c, t) for c, t in zip(charts, cky)) / len(charts),
        "tparseval": bracket_f1([tree_spans(t) for t in greedy], gold_spans)["f1"],
        "tparseval_cky": bracket_f1([tree_spans(t) for t in cky], gold_spans)["f1"],
        "tparseval_right_branching": bracket_f1([tree_spans(right_branching(n)) for n in lengths], gold_spans)["f1"],
        "tparseval_left_branching": bracket_f1([tree_spans(left_branching(n)) for n in lengths], gold_spans)["f1"],
        "sci_mean": sum(multi) / len(multi) if multi else float("nan"),
    }


def tree_projection_report(model: Transformer, sentence: str, vocab: Vocab, gold_fn: GoldFn) -> dict[str, object]:
    """Everything a report shows for one sentence: words, SCI chart, greedy/CKY/gold trees and scores."""
    gold = gold_fn(sentence)
    chart = sci_chart(model, torch.tensor(_encode(gold, vocab)))
    trees = {"greedy": greedy_tree(chart), "cky": cky_tree(chart), "gold": tree_from_spans(gold.spans, len(gold.words))}
    return {
        "words": list(gold.words),
        "chart": chart,
        "trees": trees,
        "brackets": {name: render(t, gold.words) for name, t in trees.items()},
        "tscore": {name: tree_score(chart, t) for name, t in trees.items()},
        "tparseval": {name: bracket_f1([tree_spans(t)], [gold.spans])["f1"] for name, t in trees.items()},
    }
