"""Shared plumbing of the structural-grokking LM tasks (question formation, tense inflection, Dyck).

Every example is a causal-LM sequence `<sos> input target <eos>`. This module owns what the three
tasks have in common: the `Example` and `Vocab` types, encoding to padded tensors, reading and writing
the published plain-text files, the seeded on-disk cache, the batched model-calling helpers the
metrics use, and the `LMTask` type. Scoring only ever sees a `logits_fn`, so tasks stay model-agnostic.
It knows no task by name: `grokking.tasks.registry.get_lm_task` finds a language's module.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from grokking.errors import UserError
from grokking.store import atomic_write

PAD, SOS, EOS = "<pad>", "<sos>", "<eos>"

LogitsFn = Callable[[Tensor], Tensor]
"""A causal LM: tokens [B, T] -> logits [B, T, V], where position t predicts token t + 1."""


@dataclass(frozen=True)
class Example:
    """One line of a data file; `target` is empty for Dyck, whose whole string is the sequence."""

    input: str
    target: str

    @property
    def words(self) -> list[str]:
        return f"{self.input} {self.target}".split()


class Vocab:
    """Token <-> id, built from a task's lexicon (never from data) so every file maps the same way.

    Ids: `<pad>` 0, `<sos>` 1, `<eos>` 2, then the lexicon sorted, so the order does not depend on how
    a grammar happens to list its rules.
    """

    pad_id, sos_id, eos_id = 0, 1, 2

    def __init__(self, lexicon: Iterable[str]) -> None:
        self.tokens: list[str] = [PAD, SOS, EOS, *sorted(set(lexicon) - {PAD, SOS, EOS})]
        self.index: dict[str, int] = {tok: i for i, tok in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def encode(self, words: Iterable[str]) -> list[int]:
        return [self.index[w] for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids]


# ---- encoding ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """A batch of LM sequences, right-padded.

    `loss_mask[:, t]` is aligned with the logits: it is True where position t has a real next token
    `tokens[:, t + 1]` to predict (every token after `<sos>`, `<eos>` included, no padding).
    `target_start[i]` is the index in `tokens[i]` of the first target token (`<eos>` for Dyck).
    """

    tokens: Tensor  # [N, T] long
    loss_mask: Tensor  # [N, T] bool
    target_start: Tensor  # [N] long


def pad(seqs: Sequence[Sequence[int]], pad_id: int = Vocab.pad_id) -> Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


def encode(examples: Sequence[Example], vocab: Vocab) -> Encoded:
    seqs = [[vocab.sos_id, *vocab.encode(ex.words), vocab.eos_id] for ex in examples]
    tokens = pad(seqs, vocab.pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    loss_mask = torch.arange(tokens.shape[1]) < (lengths - 1)[:, None]
    target_start = torch.tensor([1 + len(ex.input.split()) for ex in examples], dtype=torch.long)
    return Encoded(tokens, loss_mask, target_start)


# ---- published-format files -------------------------------------------------------------------------


def read_examples(path: str | Path, vocab: Vocab, paired: bool = True) -> list[Example]:
    """Read `input<TAB>target` lines (or, unpaired, one sequence a line); blank lines are skipped.

    Any malformed line or unknown token is a `UserError` naming file and line, because such files come
    from users (published data, other labs) and a silent mismatch would poison training.
    """
    return [ex for _, ex in numbered_examples(path, vocab, paired)]


def numbered_examples(path: str | Path, vocab: Vocab, paired: bool = True) -> Iterator[tuple[int, Example]]:
    """`read_examples` with each example's line number, for checks that must name the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such data file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if paired:
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                    raise UserError(f"{path}:{lineno}: expected 'input<TAB>target', got {line[:60]!r}")
                ex = Example(" ".join(parts[0].split()), " ".join(parts[1].split()))
            else:
                ex = Example(" ".join(line.split()), "")
            unknown = next((w for w in ex.words if w not in vocab), None)
            if unknown is not None:
                raise UserError(f"{path}:{lineno}: token {unknown!r} is not in the vocabulary of this task")
            yield lineno, ex


def write_examples(path: str | Path, examples: Iterable[Example], paired: bool = True) -> None:
    """Write atomically (`atomic_write`) so a crash or a concurrent reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (f"{ex.input}\t{ex.target}\n" if paired else f"{ex.input}\n" for ex in examples)
    atomic_write(path, "".join(lines).encode("utf-8"))


def draw_unique(draw: Callable[[], Example], n: int, seen: set[str]) -> list[Example]:
    """`n` draws whose inputs are not in `seen` (which is updated): held-out examples never repeat train."""
    out: list[Example] = []
    while len(out) < n:
        ex = draw()
        if ex.input not in seen:
            seen.add(ex.input)
            out.append(ex)
    return out


def cache_root() -> Path:
    return Path(os.environ.get("GROKKING_DATA_CACHE") or Path.home() / ".cache" / "grokking" / "data")


def params_hash(params: Mapping[str, object]) -> str:
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]


# ---- model-calling helpers used by the metrics --------------------------------------------------------


def length_batches(seqs: Sequence[Sequence[int]], batch_size: int) -> Iterable[list[int]]:
    """Batches of row indices, similar lengths together so little compute goes to padding."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    for s in range(0, len(order), batch_size):
        yield order[s : s + batch_size]


@torch.no_grad()
def next_token_logits(logits_fn: LogitsFn, prefixes: Sequence[Sequence[int]], batch_size: int = 256) -> Tensor:
    """[N, V] logits for the token after each prefix (right padding cannot leak into a causal LM)."""
    out: list[Tensor | None] = [None] * len(prefixes)
    for rows in length_batches(prefixes, batch_size):
        logits = logits_fn(pad([prefixes[i] for i in rows]))
        last = torch.tensor([len(prefixes[i]) - 1 for i in rows])
        for i, row in zip(rows, logits[torch.arange(len(rows)), last].float()):
            out[i] = row
    return torch.stack(out)  # type: ignore[arg-type]


@torch.no_grad()
def greedy_decode(
    logits_fn: LogitsFn, prefixes: Sequence[Sequence[int]], max_new: Sequence[int], eos_id: int, batch_size: int = 256
) -> list[list[int]]:
    """Greedy continuations (without `<eos>`), each stopping at `<eos>` or after its own `max_new` tokens.

    A per-row cap keeps each result independent of which rows share its batch.
    """
    out: list[list[int]] = [[] for _ in prefixes]
    for rows in length_batches(prefixes, batch_size):
        seqs = [list(prefixes[i]) for i in rows]
        live = [j for j, i in enumerate(rows) if max_new[i] > 0]
        while live:
            logits = logits_fn(pad([seqs[j] for j in live]))
            last = torch.tensor([len(seqs[j]) - 1 for j in live])
            nxt = logits[torch.arange(len(live)), last].argmax(-1).tolist()
            still = []
            for j, tok in zip(live, nxt):
                if tok == eos_id:
                    continue
                seqs[j].append(tok)
                out[rows[j]].append(tok)
                if len(out[rows[j]]) < max_new[rows[j]]:
                    still.append(j)
            live = still
    return out


# ---- tasks -----------------------------------------------------------------------------------------

Scorer = Callable[[LogitsFn, Sequence[Example], Vocab, int], dict[str, float]]


@dataclass(frozen=True)
class LMTask:
    """One synthetic-language task: its vocabulary, seeded generator, file naming and metric."""

    name: str
    file_stem: str  # published naming: `<stem>.<split>`
    split_names: tuple[str, ...]
    vocab: Vocab
    params: Mapping[str, object]  # everything the generator depends on; hashed into the cache path
    generate: Callable[[int], dict[str, list[Example]]]
    score: Scorer
    paired: bool = True  # lines are `input<TAB>target`; Dyck lines are one bare string
    # A line's published structure cell and words per declarative (QF and TI; see structure_mix.py).
    structure: Callable[[Example], tuple[tuple[str, str, str], int]] | None = None
    # Tree projection (`grokking analyze`): the sentences to project from some examples, and their gold parse
    # (QF and TI; None: no gold parses, so no tree measures).
    tree_sentences: Callable[[Sequence[Example]], list[str]] | None = None
    gold_parse: Callable[[str], object] | None = None

    def splits(self, data_dir: str | Path | None = None, seed: int = 0) -> dict[str, list[Example]]:
        """Read published-format files from `data_dir`, else generate for `seed` (cached on disk)."""
        if data_dir is not None:
            paths = {s: Path(data_dir) / f"{self.file_stem}.{s}" for s in self.split_names}
            return {s: read_examples(path, self.vocab, self.paired) for s, path in paths.items()}
        directory = self.cache_dir(seed)
        if all((directory / f"{self.file_stem}.{s}").is_file() for s in self.split_names):
            return self.splits(directory)
        data = self.generate(seed)
        self.write(directory, data)
        # A human-readable record of what the hash in the directory name stands for.
        record = {"task": self.name, "seed": seed, **self.params}
        atomic_write(directory / "params.json", (json.dumps(record, sort_keys=True, indent=1) + "\n").encode())
        return data

    def cache_dir(self, seed: int) -> Path:
        return cache_root() / f"{self.name}-seed{seed}-{params_hash(self.params)}"

    def export(self, directory: str | Path, seed: int = 0) -> list[Path]:
        """Write this seed's splits to `directory` in the published naming; returns the paths."""
        return self.write(Path(directory), self.splits(seed=seed))

    def evaluate(self, logits_fn: LogitsFn, examples: Sequence[Example], batch_size: int = 256) -> dict[str, float]:
        """The published metric of this task (`acc`, plus task-specific extras) on `examples`."""
        return self.score(logits_fn, examples, self.vocab, batch_size)

    def write(self, directory: str | Path, data: Mapping[str, Sequence[Example]]) -> list[Path]:
        """Write `data`'s splits to `directory` in the published naming; returns the paths."""
        paths = [Path(directory) / f"{self.file_stem}.{s}" for s in self.split_names]
        for split, path in zip(self.split_names, paths):
            write_examples(path, data[split], self.paired)
        return paths
