"""Last-position logits of a 1-layer model, computed from per-(token, position) tables.

Why: modular addition only scores the answer position, and in a 1-layer model without LayerNorm the
last position's output depends on each earlier position only through that position's token. So the
queries, keys and OV outputs of every (token, position) pair are computed once per step as small
tables (vocab x heads x ...), each example gathers its rows, and only one position goes through the
MLP and unembedding. The result equals `model(tokens)[:, -1]` up to float rounding (tested to 1e-5),
and one `nanda-p113` step costs a fraction of the full forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from grokking.model import Transformer
from grokking.precision import autocast


def supports_tables(model: Transformer) -> bool:
    """The table trick is exact only for one layer without LayerNorm, and without dropout in training."""
    cfg = model.cfg
    return cfg.n_layers == 1 and cfg.normalization == "none" and (cfg.dropout == 0 or not model.training)


def last_position_logits(model: Transformer, tokens: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Logits [batch, d_vocab_out] at the last position; tables when exact, the hooked forward otherwise.

    `dtype` (bfloat16) runs every matmul after the tables (W_O, the MLP and the unembedding: nearly all
    the FLOPs) in that dtype, each input and weight cast once per call. The tables, the softmax and the
    residual stream stay fp32, logits come back as fp32 and the loss is taken in float64 by the caller.
    """
    if not supports_tables(model) or any(hp.has_hooks() for hp in model.hook_dict.values()):
        with autocast(dtype, tokens.device):
            return model(tokens)[:, -1].float()  # hooks expect full-position activations
    block = model.blocks[0]
    attn, mlp = block.attn, block.mlp
    n_batch, n_pos = tokens.shape
    n_vocab, n_heads = model.cfg.d_vocab, model.cfg.n_heads
    # resid[i]: [vocab, d_model], the residual of every token at position i.
    resid = model.embed.W_E.unsqueeze(0) + model.pos_embed.W_pos[:n_pos].unsqueeze(1)
    keys = torch.einsum("ivd,hde->ivhe", resid, attn.W_K) + attn.b_K
    queries = torch.einsum("vd,hde->vhe", resid[-1], attn.W_Q) + attn.b_Q
    # Every (last token, position, token, head) score is a table of vocab^2 * pos * heads entries.
    score_table = torch.einsum("ivhe,whe->wivh", keys, queries) * attn.scale
    values = torch.einsum("ivd,hde->ivhe", resid, attn.W_V) + attn.b_V  # [pos, vocab, head, d_head]
    last = tokens[:, -1]
    rows = tokens + torch.arange(n_pos, device=tokens.device) * n_vocab  # row of (position i, token t)
    scores = F.embedding(rows + (last * n_pos * n_vocab)[:, None], score_table.reshape(-1, n_heads))
    pattern = torch.softmax(scores, dim=1)  # [batch, pos, head]: softmax over key positions
    # Mix values in d_head space and apply W_O once: a quarter of the memory traffic of mixing OV rows.
    gathered_values = F.embedding(rows, values.reshape(n_pos * n_vocab, -1)).view(n_batch, n_pos, n_heads, -1)
    z = (pattern.unsqueeze(-1) * gathered_values).sum(1).reshape(n_batch, -1)
    x = F.embedding(last, resid[-1]) + _matmul(z, attn.W_O.reshape(z.shape[1], -1), dtype) + attn.b_O
    x = x + (mlp(x) if dtype is None else _mlp_in(mlp, x, dtype))
    return _matmul(x, model.W_U, dtype) + model.unembed.b_U


def _matmul(x: Tensor, weight: Tensor, dtype: torch.dtype | None) -> Tensor:
    """`x @ weight`, in `dtype` when given (both cast once), returned in x's dtype."""
    if dtype is None:
        return x @ weight
    return (x.to(dtype) @ weight.to(dtype)).to(x.dtype)


def _mlp_in(mlp: torch.nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """The MLP with inputs and weights cast once to `dtype`; its output returns to the residual's dtype."""
    pre = x.to(dtype) @ mlp.W_in.to(dtype) + mlp.b_in.to(dtype)
    return (mlp.act(pre) @ mlp.W_out.to(dtype) + mlp.b_out.to(dtype)).to(x.dtype)
