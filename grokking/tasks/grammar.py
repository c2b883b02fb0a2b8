"""Weighted context-free grammars: sample derivations, parse sentences back, and read off gold trees.

The synthetic languages of the structural-grokking study (McCoy, Frank & Linzen 2020) are tiny PCFGs.
Keeping the derivation tree while sampling gives the main auxiliary/verb and the gold parse for free;
the parser re-derives any sentence (including ones read from published files), so the same facts can
be checked on data this module did not generate.

A grammar is a dict LHS -> [(weight, RHS tuple)]; a symbol with no entry is a terminal (a word).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

Rule = tuple[float, tuple[str, ...]]
Grammar = dict[str, list[Rule]]


@dataclass(frozen=True, slots=True)
class Tree:
    """A derivation node; a leaf (no children) is a word."""

    label: str
    children: tuple[Tree, ...] = ()

    @property
    def leaves(self) -> list[str]:
        if not self.children:
            return [self.label]
        return [word for child in self.children for word in child.leaves]


def terminals(grammar: Grammar) -> set[str]:
    """Every word the grammar can emit: the lexicon a vocabulary is built from."""
    return {sym for rules in grammar.values() for _, rhs in rules for sym in rhs if sym not in grammar}


class Sampler:
    """Draws derivations top-down with an explicit RNG (never the global one), so data is reproducible.

    Cumulative weights are precomputed once: generating a data set draws millions of rules.
    """

    def __init__(self, grammar: Grammar) -> None:
        self._rules = {lhs: ([rhs for _, rhs in rules], list(itertools.accumulate(w for w, _ in rules))) for lhs, rules in grammar.items()}

    def sample(self, rng: random.Random, symbol: str = "ROOT") -> Tree:
        rules = self._rules.get(symbol)
        if rules is None:
            return Tree(symbol)
        rhss, cumulative = rules
        rhs = rhss[bisect.bisect_right(cumulative, rng.random() * cumulative[-1])] if len(rhss) > 1 else rhss[0]
        return Tree(symbol, tuple(self.sample(rng, sym) for sym in rhs))


def parse(grammar: Grammar, tokens: Sequence[str], start: str = "ROOT") -> Tree | None:
    """A derivation of `tokens` from `start`, or None if there is none.

    Exhaustive top-down search memoised on (symbol, position): for each it keeps one tree per end
    position. That is cheap for these short sentences and tiny grammars; it requires a grammar without
    left recursion, which the McCoy grammars have (they have no recursion at all).
    """
    words = tuple(tokens)
    memo: dict[tuple[str, int], dict[int, Tree]] = {}

    def expand(symbol: str, i: int) -> dict[int, Tree]:
        key = (symbol, i)
        if key in memo:
            return memo[key]
        result: dict[int, Tree] = {}
        if symbol not in grammar:
            if i < len(words) and words[i] == symbol:
                result[i + 1] = Tree(symbol)
        else:
            for _, rhs in grammar[symbol]:
                partial: dict[int, tuple[Tree, ...]] = {i: ()}
                for sym in rhs:
                    extended: dict[int, tuple[Tree, ...]] = {}
                    for pos, kids in partial.items():
                        for end, sub in expand(sym, pos).items():
                            extended.setdefault(end, kids + (sub,))
                    partial = extended
                    if not partial:
                        break
                for end, kids in partial.items():
                    result.setdefault(end, Tree(symbol, kids))
        memo[key] = result
        return result

    return expand(start, 0).get(len(words))


def derivable(grammar: Grammar, tokens: Sequence[str], start: str = "ROOT") -> bool:
    """The recogniser: can `start` derive exactly `tokens`?"""
    return parse(grammar, tokens, start) is not None


# ---- gold trees -------------------------------------------------------------------------------------

Nested = Union[str, tuple["Nested", "Nested"]]

# McCoy et al.'s bottom-up grouping of adjacent categories, in priority order. Applied inside one
# grammar rule at a time (never across rule boundaries), so `V NP` cannot steal the head noun of an
# object that carries a relative clause. A bare verb counts as a VP (the tense grammar has no Aux).
_GROUPINGS: tuple[tuple[frozenset[str], frozenset[str], str], ...] = (
    (frozenset({"Det"}), frozenset({"N"}), "NP"),
    (frozenset({"Prep"}), frozenset({"NP"}), "PP"),
    (frozenset({"NP"}), frozenset({"PP", "RC"}), "NP"),
    (frozenset({"V"}), frozenset({"NP"}), "VP"),
    (frozenset({"Aux"}), frozenset({"V", "VP"}), "VP"),
    (frozenset({"NP"}), frozenset({"V", "VP"}), "S"),
    (frozenset({"Rel"}), frozenset({"V", "VP", "S"}), "RC"),
)


@dataclass(frozen=True)
class GoldTree:
    """A binary gold parse over `words`; spans are inclusive (i, j) word indices of internal nodes."""

    words: tuple[str, ...]
    nested: Nested

    @property
    def brackets(self) -> str:
        """Published style, e.g. `((the walrus) (does giggle))`."""

        def show(node: Nested) -> str:
            return node if isinstance(node, str) else f"({show(node[0])} {show(node[1])})"

        return show(self.nested)

    @property
    def spans(self) -> set[tuple[int, int]]:
        """Every constituent of two or more words, the root included (as tparseval counts them)."""
        return tree_spans(self.nested)


def tree_spans(tree: object) -> set[tuple[int, int]]:
    """Inclusive word spans of the internal nodes (>= 2 words, root included) of nested pairs; a leaf is
    anything but a tuple (a word, or a word index as in induced trees)."""
    spans: set[tuple[int, int]] = set()

    def walk(node: object, start: int) -> int:
        if not isinstance(node, tuple):
            return start + 1
        end = walk(node[1], walk(node[0], start))
        spans.add((start, end - 1))
        return end

    walk(tree, 0)
    return spans


def category(label: str) -> str:
    """Coarse category of a grammar symbol: the part before the first `_` (NP_M_S -> NP, V_trans -> V)."""
    return label.split("_")[0]


def gold_tree(tree: Tree, drop: frozenset[str] = frozenset({"."})) -> GoldTree:
    """Binarise a derivation into the published gold bracketing; words in `drop` are left out.

    Sentence-final `.` is dropped by default, as the released tree-projection code does: it always
    attaches at the root and would only add one trivially-correct span.
    """

    def build(node: Tree) -> tuple[str, Nested] | None:
        if not node.children:
            return None if node.label in drop else ("", node.label)
        items = [item for item in map(build, node.children) if item is not None]
        return category(node.label), _group(items)

    built = build(tree)
    assert built is not None, "a derivation always has words"
    return GoldTree(tuple(w for w in tree.leaves if w not in drop), built[1])


def _group(items: list[tuple[str, Nested]]) -> Nested:
    items = list(items)
    while len(items) > 1:
        for left, right, result in _GROUPINGS:
            i = next((i for i in range(len(items) - 1) if items[i][0] in left and items[i + 1][0] in right), None)
            if i is not None:
                items[i : i + 2] = [(result, (items[i][1], items[i + 1][1]))]
                break
        else:
            raise ValueError(f"no grouping joins the categories {[c for c, _ in items]}")
    return items[0][1]
