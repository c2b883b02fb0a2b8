"""Attention sparsity over checkpoints, as in Murty et al. (2023), "structural grokking".

It and the weight norm (`grokking.analysis.norms.weight_norms`) grow during training for every depth and, in the paper, do not predict which depth groks; they
are the foils to tree-structuredness (`grokking.analysis.tree_projection`).

Two attention entropies, each named for what it is:
- `attention_entropy` (columns `attn_entropy*`, `attn_sparsity`): the lab's per-head measure, the
  entropy of each head's own distribution averaged over heads and over every real query token of
  whole training sequences. It keeps per-head and per-layer detail.
- `head_averaged_attention_entropy` (columns `attn_entropy_headavg`, `attn_sparsity_headavg`): the
  released code's quantity (`get_attention_sparsity`), the entropy of the head-averaged attention
  distribution, summed over the positions of each declarative prefix, averaged over layers and
  sentences. Averaging heads first makes it lower than the per-head mean only where heads disagree
  (entropy is concave), and the per-sentence sum makes it grow with sentence length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from grokking.model import Transformer, eval_mode


def _pattern_entropy(pattern: Tensor) -> Tensor:
    """Entropy (nats) of each attention distribution [..., key] -> [...]; masked keys (p = 0) add 0."""
    return -torch.special.xlogy(pattern, pattern).sum(-1)


def attention_entropy(model: Transformer, tokens: Tensor, pad_id: int = 0, batch_size: int = 256) -> dict[str, float]:
    """Mean entropy of the causal attention distributions over the real query positions of `tokens`.

    `tokens` [batch, pos] must be right-padded (as `lm_data.pad` does), so a real query never sees a
    pad key; every non-pad position is a query, `<sos>` included (its distribution has one key and
    entropy 0). Averaging: per head, the mean over all real query positions of all sequences
    (token-weighted, positions and sequences pooled); `attn_entropy_l{l}` is the mean over that layer's
    heads; `attn_entropy` the mean over layers. `attn_sparsity` is -`attn_entropy`. This is NOT the
    released code's number, which averages the heads' distributions before taking one entropy and sums
    over positions: see `head_averaged_attention_entropy`.
    """
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    totals = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    n_queries = 0
    device = next(model.parameters()).device
    with eval_mode(model):
        for chunk in tokens.to(device).split(batch_size):
            real = (chunk != pad_id).double()
            _, cache = model.run_with_cache(chunk, names_filter=names)
            entropy = torch.stack([_pattern_entropy(cache[name].double()) for name in names])  # [layer, b, head, q]
            totals += torch.einsum("lbhq,bq->lh", entropy, real).cpu()
            n_queries += int(real.sum().item())
    per_head = totals / max(n_queries, 1)
    out = {f"attn_entropy_l{l}h{h}": per_head[l, h].item() for l in range(n_layers) for h in range(n_heads)}
    out |= {f"attn_entropy_l{l}": per_head[l].mean().item() for l in range(n_layers)}
    out["attn_entropy"] = per_head.mean().item()
    out["attn_sparsity"] = -out["attn_entropy"]
    return out


def head_averaged_attention_entropy(model: Transformer, sequences: list[list[int]], pad_id: int = 0, batch_size: int = 256) -> dict[str, float]:
    """The released code's attention entropy: of the head-averaged distribution, summed over positions.

    `sequences` are `<sos> w_0 .. w_{n-1}` id lists (the declarative prefixes, as the released code
    feeds them). Per sentence and layer: sum over query positions q of H(mean over heads of the
    attention row q); then the mean over layers, then over sentences (`get_attention_sparsity`
    divides by the number of layers per batch and `get_sparsity_scores_helper` by the number of
    sentences). Keys: `attn_entropy_headavg` and `attn_sparsity_headavg` (its negative).
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)]
    total = 0.0
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(sequences), batch_size):
            chunk = sequences[start : start + batch_size]
            tokens = torch.full((len(chunk), max(map(len, chunk))), pad_id, dtype=torch.long)
            for i, seq in enumerate(chunk):
                tokens[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            real = (torch.arange(tokens.shape[1])[None, :] < torch.tensor([len(s) for s in chunk])[:, None]).double()
            _, cache = model.run_with_cache(tokens.to(device), names_filter=names)
            for name in names:
                averaged = cache[name].double().mean(dim=1)  # [b, q, k]: heads averaged first
                total += (_pattern_entropy(averaged).cpu() * real).sum().item() / n_layers
    entropy = total / max(len(sequences), 1)
    return {"attn_entropy_headavg": entropy, "attn_sparsity_headavg": -entropy}
