"""The structural-grokking measures of one language-model checkpoint, for `grokking analyze`.

Every checkpoint is measured on the same fixed sample: `sample` training examples drawn at random
(seeded by `sample_seed`) from the whole training set, as the released code samples 10,000 at random
(the default 2,000 costs a fifth of that per checkpoint; docs/results/analysis-fidelity.md gives the
spread across samples). On that sample:
- the lab's per-head attention entropy, over the whole LM sequences;
- the released code's head-averaged attention entropy, over the declarative prefixes (`<sos>` and the
  words, no `.` or marker; Dyck: the whole string);
- tree projections of the same declaratives: QF uses the declaratives of `quest` lines, as the
  paper's code did; TI uses every line. Dyck has no gold parses, so its runs get no tree measures.
"""

from __future__ import annotations

import json
import random

import pandas as pd
import torch

from grokking.analysis.early_stopping import early_stopping
from grokking.analysis.norms import weight_norms
from grokking.analysis.steps import spread_steps
from grokking.analysis.structural import attention_entropy, head_averaged_attention_entropy
from grokking.analysis.tree_projection import tree_measures, tree_projection_report
from grokking.run import Run
from grokking.store import atomic_write
from grokking.tasks.lm_data import Example, encode

N_TREE_STEPS = 6


def random_sample(examples: list[Example], size: int, seed: int) -> list[Example]:
    """`size` examples drawn without replacement (all of them, in order, when there are fewer)."""
    if size >= len(examples):
        return list(examples)
    return random.Random(seed).sample(examples, size)


class StructuralPlan:
    """Weight norms, both attention entropies, tscore and tparseval of a language run."""

    def __init__(self, run: Run, final_step: int, sample: int, sample_seed: int):
        """The registry's plan signature (grokking/families.py); every checkpoint is measured on the same
        `sample` training examples drawn with `sample_seed`, so `final_step` is not needed."""
        self.run, self.data = run, run.task
        lm_task = self.data.lm_task
        vocab = lm_task.vocab
        examples = random_sample(self.data.train_examples, sample, sample_seed)  # filtered like training: fits the context
        self.tokens = encode(examples, vocab).tokens
        self.sentences = lm_task.tree_sentences(examples) if lm_task.tree_sentences else []
        self.gold_fn = lm_task.gold_parse
        if self.gold_fn is not None:
            self.prefixes = [[vocab.sos_id, *vocab.encode(self.gold_fn(s).words)] for s in self.sentences]
        else:
            self.prefixes = [[vocab.sos_id, *vocab.encode(ex.input.split())] for ex in examples]
        self.metrics = run.metrics.set_index("step")
        self.signature = {"kind": "structural", "task": run.config.task.task, "sample": sample, "sample_seed": sample_seed}

    @torch.no_grad()
    def row(self, step: int) -> tuple[dict[str, float], list[dict]]:
        model = self.run.model(step)
        row: dict[str, float] = {"step": step}
        if step in self.metrics.index:
            row.update(self.metrics.loc[step].to_dict())
        norms = weight_norms(model)
        row["weight_norm"] = norms["weight_norm"]
        row["weight_norm_per_layer"] = norms["weight_norm_depth_normalized"]
        row.update({k: v for k, v in norms.items() if k.startswith("weight_norm_layer")})
        row.update(attention_entropy(model, self.tokens))
        row.update(head_averaged_attention_entropy(model, self.prefixes))
        if self.sentences:
            row.update(tree_measures(model, self.sentences, self.data.lm_task.vocab, self.gold_fn))
        return row, []

    def finish(self, table: pd.DataFrame, good_steps: list[int]) -> dict:
        if self.sentences:
            trees = {}
            for step in spread_steps(good_steps, N_TREE_STEPS):
                report = tree_projection_report(self.run.model(step), self.sentences[0], self.data.lm_task.vocab, self.gold_fn)
                trees[str(step)] = {
                    "words": report["words"],
                    "chart": report["chart"].nan_to_num(0).tolist(),
                    "brackets": report["brackets"],
                    "tscore": report["tscore"],
                    "tparseval": report["tparseval"],
                }
            atomic_write(self.run.dir.analysis_trees_path, json.dumps(trees).encode())
        metrics = self.run.metrics
        return {"early_stopping": early_stopping(metrics).to_dict() if "gen_acc" in metrics else None, "sample_declaratives": len(self.sentences)}
