"""The transformer: a causal decoder built on TransformerLens's `HookedRootModule`.

Parameter names and shapes follow TransformerLens (`embed.W_E`, `blocks.0.attn.W_Q`, ...), and
HookPoints sit where TransformerLens puts them, so `run_with_cache` / `run_with_hooks` and caches
keyed like `blocks.0.attn.hook_pattern` work as researchers expect. One module covers both studies:
the 1-layer, no-LayerNorm modular-addition model and the deeper post-LN language models.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from grokking.config import ModelConfig


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.read_in = cfg.read_in

    def forward(self, tokens: Tensor) -> Tensor:
        """Token ids [batch, pos] -> rows of W_E; with `read_in`, real vectors [batch, pos, d_vocab] -> their product with W_E."""
        return tokens @ self.W_E if self.read_in else F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.positional == "learned":
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        else:
            self.register_buffer("W_pos", sinusoidal_positions(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.W_pos[: tokens.shape[1] if tokens.is_floating_point() else tokens.shape[-1]].unsqueeze(0)


def sinusoidal_positions(n_ctx: int, d_model: int) -> Tensor:
    """The fixed sin/cos table of Vaswani et al. (used by the structural-grokking LMs)."""
    pos = torch.arange(n_ctx, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_ctx, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return table


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        # Without biases the zeros stay as buffers, so checkpoints always have the TL layout.
        for name, shape in (("b_Q", (h, e)), ("b_K", (h, e)), ("b_V", (h, e)), ("b_O", (d,))):
            if cfg.attn_bias:
                setattr(self, name, nn.Parameter(torch.zeros(shape)))
            else:
                self.register_buffer(name, torch.zeros(shape))
        self.scale = 1.0 / math.sqrt(e)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        self.hook_result = HookPoint()

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """`allowed` is a bool mask [batch or 1, query, key]: True where a query may attend."""
        q = self.hook_q(torch.einsum("bpd,hde->bphe", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpd,hde->bphe", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V) + self.b_V)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
        scores = self.hook_attn_scores(scores.masked_fill(~allowed[:, None], float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", self.dropout(pattern), v))
        if self.hook_result.has_hooks():
            # Per-head outputs cost a [batch, pos, head, d_model] tensor, so only when asked for.
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        return torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = F.relu if cfg.act_fn == "relu" else F.gelu
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        return self.hook_post(self.act(pre)) @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.normalization = cfg.normalization
        if cfg.normalization != "none":
            self.ln1 = LayerNorm(cfg.d_model)
            self.ln2 = LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_resid_pre = HookPoint()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, resid: Tensor, allowed: Tensor) -> Tensor:
        resid = self.hook_resid_pre(resid)
        if self.normalization == "pre":
            attn_out = self.hook_attn_out(self.attn(self.ln1(resid), allowed))
            resid = self.hook_resid_mid(resid + self.dropout(attn_out))
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
            return self.hook_resid_post(resid + self.dropout(mlp_out))
        attn_out = self.hook_attn_out(self.attn(resid, allowed))
        resid = resid + self.dropout(attn_out)
        resid = self.hook_resid_mid(self.ln1(resid) if self.normalization == "post" else resid)
        mlp_out = self.hook_mlp_out(self.mlp(resid))
        resid = resid + self.dropout(mlp_out)
        return self.hook_resid_post(self.ln2(resid) if self.normalization == "post" else resid)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not cfg.tied_embeddings:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))
        if cfg.unembed_bias:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))
        else:
            self.register_buffer("b_U", torch.zeros(cfg.d_vocab_out))


class Transformer(HookedRootModule):
    """A causal transformer with TransformerLens names; `forward(tokens)` returns logits [batch, pos, vocab_out]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.d_vocab < 1 or cfg.d_vocab_out < 1 or cfg.n_ctx < 1:
            raise ValueError("d_vocab, d_vocab_out and n_ctx must be set (the task fills them in)")
        if cfg.tied_embeddings and cfg.d_vocab_out > cfg.d_vocab:
            raise ValueError("tied embeddings need d_vocab_out <= d_vocab")
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        if cfg.normalization == "pre":
            self.ln_final = LayerNorm(cfg.d_model)
        self.unembed = Unembed(cfg)
        self.register_buffer("causal", torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril(), persistent=False)
        self.init_weights()
        self.setup()

    @property
    def W_U(self) -> Tensor:
        """The unembedding; with tied embeddings it is the transposed embedding of the output tokens."""
        if self.cfg.tied_embeddings:
            return self.embed.W_E[: self.cfg.d_vocab_out].T
        return self.unembed.W_U

    def init_weights(self) -> None:
        """'nanda': N(0, 1/d_model) as in the paper's code; 'tl': N(0, (0.8/sqrt(d_model))^2) like TransformerLens;
        'torch': PyTorch's module defaults (embeddings N(0, 1), weights U(+-1/sqrt(fan_in))), as in an
        `nn.TransformerEncoder` LM. Why 'torch' matters: with sinusoidal positions (entries up to 1) the
        smaller inits make token identity ~10x weaker than position at the input of a post-LN model."""
        if self.cfg.init == "torch":
            self._init_like_torch()
            return
        std = (1.0 if self.cfg.init == "nanda" else 0.8) / math.sqrt(self.cfg.d_model)
        for name, param in self.named_parameters():
            if name.endswith((".w",)):
                continue
            if name.split(".")[-1].startswith("W_"):
                nn.init.normal_(param, std=std)
        if not self.cfg.tied_embeddings and self.cfg.init == "nanda":
            nn.init.normal_(self.unembed.W_U, std=1.0 / math.sqrt(self.cfg.d_vocab_out))

    def _init_like_torch(self) -> None:
        fan_in = {"W_Q": "d_model", "W_K": "d_model", "W_V": "d_model", "W_in": "d_model", "W_U": "d_model", "W_out": "d_mlp"}
        for name, param in self.named_parameters():
            leaf = name.split(".")[-1]
            if leaf in ("W_E", "W_pos"):
                nn.init.normal_(param, std=1.0)
            elif leaf == "W_O":
                bound = 1.0 / math.sqrt(self.cfg.n_heads * self.cfg.d_head)
                nn.init.uniform_(param, -bound, bound)
            elif leaf in fan_in:
                bound = 1.0 / math.sqrt(getattr(self.cfg, fan_in[leaf]))
                nn.init.uniform_(param, -bound, bound)

    def residual_stream(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The final residual stream [batch, pos, d_model] (after ln_final for pre-LN models).
        `tokens`: ids [batch, pos], or real vectors [batch, pos, d_vocab] for a `read_in` model."""
        n = tokens.shape[1] if tokens.is_floating_point() else tokens.shape[-1]
        if n > self.cfg.n_ctx:
            raise ValueError(f"sequence of length {n} is longer than the model's context ({self.cfg.n_ctx})")
        allowed = self.causal[:n, :n].unsqueeze(0)
        if attention_mask is not None:
            allowed = allowed & attention_mask
        resid = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))
        resid = self.embed_dropout(resid)
        for block in self.blocks:
            resid = block(resid, allowed)
        if self.cfg.normalization == "pre":
            resid = self.ln_final(resid)
        return resid

    def forward(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits [batch, pos, d_vocab_out]. `attention_mask` [batch, query, key] further restricts attention."""
        return self.residual_stream(tokens, attention_mask) @ self.W_U + self.unembed.b_U


def checkpoint_tensors(model: Transformer) -> dict[str, Tensor]:
    """The model's weights in TransformerLens layout; a tied model also gets its derived `unembed.W_U`."""
    tensors = dict(model.state_dict())
    if model.cfg.tied_embeddings:
        tensors["unembed.W_U"] = model.W_U.detach()
    return tensors


def load_tensors(model: Transformer, tensors: dict[str, Tensor]) -> Transformer:
    """Load TL-layout weights, with a clear error when the file does not fit this model."""
    tensors = dict(tensors)
    if model.cfg.tied_embeddings:
        tensors.pop("unembed.W_U", None)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]}")
    model.load_state_dict(tensors)
    return model


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Dropout off and no autograd for an evaluation or analysis, restoring the caller's train/eval flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
