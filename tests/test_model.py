"""The hooked model: TransformerLens names and shapes, hooks, causality, and the table fast path."""

from __future__ import annotations

import pytest
import torch

from grokking.config import ModelConfig
from grokking.fast_forward import last_position_logits, supports_tables
from grokking.model import Transformer, checkpoint_tensors, load_tensors


def make(**kw) -> Transformer:
    cfg = ModelConfig(d_vocab=24, d_vocab_out=23, n_ctx=3, d_model=32, n_heads=2, d_head=16, d_mlp=64, **kw)
    torch.manual_seed(0)
    return Transformer(cfg)


def test_parameter_names_and_shapes_follow_transformer_lens() -> None:
    model = make(n_layers=2, normalization="pre")
    shapes = {k: tuple(v.shape) for k, v in checkpoint_tensors(model).items()}
    assert shapes["embed.W_E"] == (24, 32)
    assert shapes["pos_embed.W_pos"] == (3, 32)
    assert shapes["blocks.1.attn.W_Q"] == (2, 32, 16)
    assert shapes["blocks.1.attn.W_O"] == (2, 16, 32)
    assert shapes["blocks.0.attn.b_K"] == (2, 16)
    assert shapes["blocks.0.attn.b_O"] == (32,)
    assert shapes["blocks.0.mlp.W_in"] == (32, 64)
    assert shapes["blocks.0.mlp.W_out"] == (64, 32)
    assert shapes["blocks.0.ln1.w"] == (32,)
    assert shapes["ln_final.b"] == (32,)
    assert shapes["unembed.W_U"] == (32, 23)
    assert shapes["unembed.b_U"] == (23,)


def test_run_with_cache_exposes_the_usual_hooks() -> None:
    model = make()
    model.blocks[0].attn.hook_result.add_hook(lambda x, hook: x)  # hook_result is computed only when hooked
    tokens = torch.tensor([[1, 2, 23], [4, 5, 23]])
    logits, cache = model.run_with_cache(tokens)
    model.reset_hooks()
    for name in [
        "hook_embed",
        "hook_pos_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.0.attn.hook_q",
        "blocks.0.attn.hook_z",
        "blocks.0.attn.hook_attn_scores",
        "blocks.0.mlp.hook_pre",
        "blocks.0.mlp.hook_post",
    ]:
        assert name in cache, name
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert pattern.shape == (2, 2, 3, 3)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 3))
    assert torch.all(pattern.triu(1) == 0), "attention must be causal"
    assert logits.shape == (2, 3, 23)


def test_hook_result_sums_to_attention_output() -> None:
    model = make()
    tokens = torch.tensor([[1, 2, 23]])
    # hook_result is only filled when something hooks it, like TransformerLens's use_attn_result.
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_attn_out", "hook_result")))
    torch.testing.assert_close(cache["blocks.0.attn.hook_result"].sum(2) + model.blocks[0].attn.b_O, cache["blocks.0.hook_attn_out"])


def test_run_with_hooks_can_ablate() -> None:
    model = make()
    tokens = torch.tensor([[1, 2, 23]])
    clean = model(tokens)
    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", lambda x, hook: torch.zeros_like(x))])
    assert not torch.allclose(clean, ablated)
    torch.testing.assert_close(model(tokens), clean)  # hooks were removed afterwards


@pytest.mark.parametrize(
    "kw",
    [
        {"normalization": "none"},
        {"normalization": "pre"},
        {"normalization": "post"},
        {"act_fn": "gelu"},
        {"positional": "sinusoidal"},
        {"attn_bias": True, "unembed_bias": True},
        {"tied_embeddings": True},
        {"n_layers": 3, "normalization": "post", "dropout": 0.1},
    ],
)
def test_every_variant_is_causal(kw: dict) -> None:
    model = make(**kw).eval()
    a = torch.tensor([[1, 2, 3]])
    b = torch.tensor([[1, 2, 9]])
    la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :2], lb[:, :2])  # earlier positions never see later tokens
    assert not torch.allclose(la[:, 2], lb[:, 2])


@pytest.mark.parametrize(
    "kw", [{}, {"attn_bias": True, "unembed_bias": True}, {"positional": "sinusoidal"}, {"act_fn": "gelu"}, {"tied_embeddings": True}]
)
def test_table_fast_path_equals_the_hooked_forward(kw: dict) -> None:
    model = make(**kw)
    for p in model.parameters():  # trained weights are larger than init; test at a realistic scale
        p.data.mul_(3)
    tokens = torch.randint(0, 23, (500, 3))
    tokens[:, 2] = 23
    assert supports_tables(model)
    fast = last_position_logits(model, tokens)
    full = model(tokens)[:, -1]
    # Measured (benchmarks/tolerance_bounds.py): 2.8e-7 of the logits' scale on AMX/AVX-512 and AVX2 kernels.
    assert (fast - full).abs().max().item() < 1e-5 * max(1.0, full.abs().max().item())


def test_fast_path_gradients_match() -> None:
    model = make()
    tokens = torch.randint(0, 23, (64, 3))
    labels = torch.randint(0, 23, (64,))
    grads = []
    for fn in (lambda: last_position_logits(model, tokens), lambda: model(tokens)[:, -1]):
        model.zero_grad()
        torch.nn.functional.cross_entropy(fn().double(), labels).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for k in grads[0]:  # measured: within 1.4e-6 of each gradient's largest entry, on AMX/AVX-512 and AVX2 kernels
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-4)


def test_fast_path_falls_back_where_it_would_be_wrong() -> None:
    assert not supports_tables(make(normalization="pre"))
    assert not supports_tables(make(n_layers=2))
    model = make(normalization="post")
    tokens = torch.randint(0, 23, (10, 3))
    torch.testing.assert_close(last_position_logits(model, tokens), model(tokens)[:, -1])


def test_checkpoint_round_trip_with_tied_embeddings() -> None:
    model = make(tied_embeddings=True)
    tensors = checkpoint_tensors(model)
    assert tensors["unembed.W_U"].shape == (32, 23)
    other = make(tied_embeddings=True, init="tl")
    load_tensors(other, tensors)
    tokens = torch.tensor([[1, 2, 23]])
    torch.testing.assert_close(other(tokens), model(tokens))
    with pytest.raises(ValueError, match="do not fit"):
        load_tensors(Transformer(ModelConfig(d_vocab=24, d_vocab_out=23, n_ctx=3)), tensors)  # d_model 128 != 32
