"""Wall-clock time of tscore + tparseval (`tree_measures`) on 1,000 question-formation declaratives.

    .venv/bin/python benchmarks/tree_projection_speed.py [--sentences 1000] [--batch-size 512]

The model is a random-init 6-layer post-LN LM (d_model 128, 4 heads, d_mlp 512), the qf-cpu shape at
the paper's best QF depth. Sentences are the first `decl` lines of the seed-0 training split. The
target is <= 60 s on a 2-core CPU; the time is split into gold parsing, SCI charts and decoding.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from grokking.analysis.tree_projection import cky_tree, greedy_tree, sci_charts, tree_measures, tree_score
from grokking.config import ModelConfig
from grokking.model import Transformer
from grokking.tasks import question_formation as qf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512, help="rows (sentence x span start) per forward pass")
    args = parser.parse_args()

    vocab = qf.TASK.vocab
    examples = [ex for ex in qf.TASK.splits(seed=0)["train"] if not qf.is_question(ex)][: args.sentences]
    sentences = [" ".join(qf.declarative_words(ex)) for ex in examples]
    cfg = ModelConfig(n_layers=6, d_model=128, n_heads=4, d_head=32, d_mlp=512, normalization="post",
                      positional="sinusoidal", attn_bias=True, unembed_bias=True, init="tl",
                      d_vocab=len(vocab), d_vocab_out=len(vocab), n_ctx=64)  # fmt: skip
    torch.manual_seed(0)
    model = Transformer(cfg)
    load = os.getloadavg()[0]

    start = time.perf_counter()
    out = tree_measures(model, sentences, vocab, qf.gold_parse, args.batch_size)
    total_s = time.perf_counter() - start
    # The same work again in parts, to show where the time goes.
    start = time.perf_counter()
    golds = [qf.gold_parse(s) for s in sentences]
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    charts = [c.tolist() for c in sci_charts(model, [[vocab.sos_id, *vocab.encode(g.words)] for g in golds], args.batch_size)]
    charts_s = time.perf_counter() - start
    start = time.perf_counter()
    for chart in charts:
        for decode in (greedy_tree, cky_tree):
            tree_score(chart, decode(chart))
    decode_s = time.perf_counter() - start

    n_words = sum(len(g.words) for g in golds)
    print(f"{len(sentences)} sentences ({n_words / len(sentences):.1f} words on average), 6-layer d128 post-LN, "
          f"{torch.get_num_threads()} threads, load average {load:.2f} at start")  # fmt: skip
    print(f"tree_measures (tscore + tparseval, greedy and CKY): {total_s:6.1f} s")
    print(f"  in parts: gold parses {parse_s:.1f} s, SCI charts {charts_s:.1f} s, greedy + CKY decoding and scores {decode_s:.1f} s")
    print("  " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))


if __name__ == "__main__":
    main()
