"""The language-model forward without hooks: fused QKV, batched-matmul attention, no work on padding.

Why: a structural-grokking batch is right-padded to its longest row, and a random batch of 64 is
40% padding for question formation and 68% for Dyck (`benchmarks/lm_step_time.py`). Rows are
independent and the model is causal, so every position-wise op (the QKV, output, MLP and
unembedding matmuls, LayerNorm and residual adds) runs on the real positions only (the training
step adds a few padding positions to fill its last `ROW_BLOCK`), as one flat [tokens, d_model]
matrix; only attention scatters them back to [batch, pos] for two batched
matmuls under the causal mask (a real position attends only to earlier positions, which are
real, so no padding mask is needed). The hooked forward spends the
rest of its time in per-head einsums, HookPoint calls and a five-kernel LayerNorm; here each
linear map is one `addmm`, LayerNorm is `F.layer_norm`, and the loss is taken on the flat rows.

The result equals the hooked forward up to float rounding (tests/test_fast_lm.py, with gradients).
Anything it cannot reproduce exactly (active hooks, dropout in training) uses the hooked forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from grokking.model import Transformer

# The training step computes on a multiple of this many flat rows. Why: the number of real positions differs
# in nearly every random batch, and oneDNN builds (JIT-compiles) a bf16 matmul kernel for each new shape and
# keeps only so many: with exact row counts a bf16 run keeps building kernels, and its steps slow down as it
# goes (docs/results/lm-speed.md). A few padding rows per step cost less.
ROW_BLOCK = 64


def supports_fast_lm(model: Transformer) -> bool:
    """Exact only without hooks (they expect full activations) and without dropout in training (its RNG draws);
    token ids only (a `read_in` model takes real vectors)."""
    if (model.cfg.dropout and model.training) or model.cfg.read_in:
        return False
    return not any(hp.has_hooks() for hp in model.hook_dict.values())


def logits(model: Transformer, tokens: Tensor) -> Tensor:
    """`model(tokens)`: logits [batch, pos, d_vocab_out] at every position (evaluation and decoding)."""
    n_batch, n_pos = tokens.shape
    if n_pos > model.cfg.n_ctx:
        raise ValueError(f"sequence of length {n_pos} is longer than the model's context ({model.cfg.n_ctx})")
    resid = _residual(model, tokens, None)
    return torch.addmm(model.unembed.b_U, resid, model.W_U).view(n_batch, n_pos, -1)


def loss_and_acc(model: Transformer, tokens: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Next-token cross-entropy and accuracy where `loss_mask` [batch, pos - 1] (each row a prefix), computed
    on those positions only (rounded up to a multiple of `ROW_BLOCK` rows): the hooked `lm_loss_and_acc`
    without the padding work."""
    length = int(loss_mask.sum(-1).max())
    tokens, loss_mask = tokens[:, : length + 1], loss_mask[:, :length]
    if length > model.cfg.n_ctx:
        raise ValueError(f"sequence of length {length} is longer than the model's context ({model.cfg.n_ctx})")
    flat_mask = loss_mask.reshape(-1)
    real = flat_mask.nonzero().squeeze(1)
    # Padding positions to fill the last block (as many as the batch has): causal attention keeps them out of
    # every real position, and the loss leaves them out, so they change neither loss nor gradients.
    rows = torch.cat([real, (~flat_mask).nonzero().squeeze(1)[: -len(real) % ROW_BLOCK]])
    resid = _residual(model, tokens[:, :-1], rows)
    out = torch.addmm(model.unembed.b_U, resid, model.W_U)[: len(real)]
    targets = tokens[:, 1:].reshape(-1)[real]
    return F.cross_entropy(out.float(), targets), (out.argmax(-1) == targets).float().mean()


def _residual(model: Transformer, tokens: Tensor, rows: Tensor | None) -> Tensor:
    """The final residual stream [rows, d_model] at the flat positions `rows` of `tokens` [batch, pos]
    (None: all). `rows` must hold, with each real position, every earlier position of its row; padding
    positions among them come out as values that no real position depends on."""
    cfg = model.cfg
    n_batch, n_pos = tokens.shape
    x = (F.embedding(tokens, model.embed.W_E) + model.pos_embed.W_pos[:n_pos]).view(n_batch * n_pos, -1)
    if rows is not None:
        x = x.index_select(0, rows)
    # Additive causal mask: 0 where a query may attend, -inf elsewhere, added to the scores by `baddbmm`.
    causal = torch.zeros(n_pos, n_pos, dtype=x.dtype, device=x.device).masked_fill(~model.causal[:n_pos, :n_pos], float("-inf"))
    for block in model.blocks:
        attn, mlp = block.attn, block.mlp
        if cfg.normalization == "pre":
            x = x + _attention(attn, _norm(block.ln1, x), rows, n_batch, causal)
            x = x + _mlp(mlp, _norm(block.ln2, x))
            continue
        x = x + _attention(attn, x, rows, n_batch, causal)
        if cfg.normalization == "post":
            x = _norm(block.ln1, x)
        x = x + _mlp(mlp, x)
        if cfg.normalization == "post":
            x = _norm(block.ln2, x)
    if cfg.normalization == "pre":
        x = _norm(model.ln_final, x)
    return x


def _attention(attn: torch.nn.Module, x: Tensor, rows: Tensor | None, n_batch: int, causal: Tensor) -> Tensor:
    """Causal multi-head attention on flat rows: one QKV matmul, two batched matmuls, one output matmul."""
    n_pos = causal.shape[0]
    n_heads, d_model, d_head = attn.W_Q.shape
    w_qkv = torch.cat([w.transpose(0, 1).reshape(d_model, n_heads * d_head) for w in (attn.W_Q, attn.W_K, attn.W_V)], 1)
    b_qkv = torch.cat([attn.b_Q.reshape(-1), attn.b_K.reshape(-1), attn.b_V.reshape(-1)])
    qkv = torch.addmm(b_qkv, x, w_qkv)
    if rows is not None:  # back to [batch * pos]; padding rows stay zero and are attended to by nothing real
        qkv = qkv.new_zeros(n_batch * n_pos, qkv.shape[1]).index_copy_(0, rows, qkv)
    q, k, v = qkv.view(n_batch, n_pos, 3, n_heads, d_head).permute(2, 0, 3, 1, 4).reshape(3, -1, n_pos, d_head).unbind(0)
    # Spelled out rather than `scaled_dot_product_attention`, whose CPU backward at these sizes (pos <= 64,
    # d_head 32) is 1.4x slower in fp32 and ~8x slower in bf16 (benchmarks/lm_step_time.py --attention).
    pattern = torch.softmax(torch.baddbmm(causal, q, k.transpose(1, 2), alpha=attn.scale), dim=-1)
    z = torch.bmm(pattern, v).view(n_batch, n_heads, n_pos, d_head).transpose(1, 2).reshape(n_batch * n_pos, -1)
    if rows is not None:
        z = z.index_select(0, rows)
    return torch.addmm(attn.b_O, z, attn.W_O.reshape(n_heads * d_head, d_model))


def _mlp(mlp: torch.nn.Module, x: Tensor) -> Tensor:
    return torch.addmm(mlp.b_out, mlp.act(torch.addmm(mlp.b_in, x, mlp.W_in)), mlp.W_out)


def _norm(ln: torch.nn.Module, x: Tensor) -> Tensor:
    """The lab's LayerNorm (biased variance, eps inside the square root) as one kernel."""
    return F.layer_norm(x, x.shape[-1:], ln.w, ln.b, ln.eps)
