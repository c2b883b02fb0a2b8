"""fast_lm.py: the language-model step without hooks equals the hooked step (loss and gradients), and resumes exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from grokking import fast_lm
from grokking.config import preset_config
from grokking.model import Transformer
from grokking.objectives import fast_lm_loss_and_acc, lm_loss_and_acc
from grokking.precision import (
    autocast,
    has_fast_bf16,
    resolve_precision,
    warn_emulated_bf16,
)
from grokking.train import build_model, train

from conftest import assert_bit_identical, tiny_lm

CPU = torch.device("cpu")
VOCAB = {"qf-cpu": 71, "ti-cpu": 101, "dyck-cpu": 43}  # the presets' generated vocabularies


def preset_model(preset: str, dtype: torch.dtype = torch.float32) -> Transformer:
    """The preset's model shape (depth, width, heads, post-LN, sinusoidal positions) with its vocabulary size."""
    cfg = preset_config(preset)
    cfg.model.d_vocab = cfg.model.d_vocab_out = VOCAB[preset]
    cfg.model.n_ctx = 64
    return build_model(cfg).to(dtype)


def batch(preset: str, padded: bool, n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows `<sos> ... <eos> <pad>...` with random lengths (or all of the longest length)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 40, (n,), generator=g) if padded else torch.full((n,), 30)
    lengths[0] = lengths.max()
    tokens = torch.randint(3, VOCAB[preset], (n, int(lengths.max())), generator=g)
    tokens[:, 0] = 1
    tokens[torch.arange(n), lengths - 1] = 2
    tokens[torch.arange(tokens.shape[1]) >= lengths[:, None]] = 0
    loss_mask = torch.arange(tokens.shape[1]) < (lengths - 1)[:, None]
    return tokens, loss_mask


def loss_and_grads(model: Transformer, fn, tokens: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    with autocast(dtype, next(model.parameters()).device):
        loss, _ = fn(model, tokens, mask)
    loss.backward()
    # b_K's true gradient is zero (a key bias shifts every score of a query alike): only rounding noise, left out.
    grads = [p.grad.flatten() for name, p in model.named_parameters() if not name.endswith("b_K")]
    return loss.item(), torch.cat(grads).double()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


CASES = [(preset, padded) for preset in VOCAB for padded in (True, False)]


@pytest.mark.parametrize("preset,padded", CASES)
def test_fast_step_is_the_hooked_step_in_float64(preset: str, padded: bool) -> None:
    """The same mathematics: in float64 the two forwards agree to rounding (measured 1e-15 relative)."""
    model = preset_model(preset, torch.float64)
    tokens, mask = batch(preset, padded)
    loss, grads = loss_and_grads(model, fast_lm.loss_and_acc, tokens, mask)
    ref_loss, ref_grads = loss_and_grads(model, lm_loss_and_acc, tokens, mask)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert rel(grads, ref_grads) < 1e-10


def assert_fast_step_matches_the_hooked_step_in_fp32(model: Transformer, tokens: torch.Tensor, mask: torch.Tensor) -> None:
    """fp32 loss and gradients of the two steps agree to fp32 rounding (also run on a GPU by tests/test_cuda.py)."""
    loss, grads = loss_and_grads(model, fast_lm.loss_and_acc, tokens, mask)
    ref_loss, ref_grads = loss_and_grads(model, lm_loss_and_acc, tokens, mask)
    # Both are fp32 roundings of the float64 result above. Measured over 27 batches (these 6 cases x 3 seeds
    # and 9 training batches of 64): gradients differed by 2e-7 to 6e-7 in relative norm, and by 1.5e-4 and
    # 3.5e-4 on two ill-conditioned batches, where each fp32 step was ~1e-4 away from float64; losses by
    # at most 2.4e-7 relative. A wrong forward differs by O(1).
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert rel(grads, ref_grads) < 2e-3


def assert_fast_bf16_step_is_as_close_to_exact_as_the_hooked_one(model: Transformer, tokens: torch.Tensor, mask: torch.Tensor) -> None:
    """The fast bf16 step is about as far from the float64 step as the hooked bf16 step (also run on a GPU)."""
    exact_loss, exact = loss_and_grads(model.double(), lm_loss_and_acc, tokens, mask)
    model.float()
    loss, grads = loss_and_grads(model, fast_lm.loss_and_acc, tokens, mask, torch.bfloat16)
    ref_loss, ref_grads = loss_and_grads(model, lm_loss_and_acc, tokens, mask, torch.bfloat16)
    # bf16 keeps 8 bits of mantissa, so the two bf16 steps differ from each other by 1-4% (relative gradient
    # norm, measured on these 6 cases x 3 seeds); what must hold is that the fast step is about as far from the
    # exact gradient as the hooked bf16 step: measured ratio 0.87-1.07, bound 1.5. Both bf16 losses were
    # within 1.0e-3 of the exact one (a loss of ~4.5), bound 3e-3.
    assert rel(grads, exact) < 1.5 * rel(ref_grads, exact)
    assert abs(loss - exact_loss) < 3e-3 and abs(ref_loss - exact_loss) < 3e-3


@pytest.mark.parametrize("preset,padded", CASES)
def test_fast_step_matches_the_hooked_step_in_fp32(preset: str, padded: bool) -> None:
    assert_fast_step_matches_the_hooked_step_in_fp32(preset_model(preset), *batch(preset, padded))


@pytest.mark.parametrize("preset,padded", CASES)
def test_fast_step_in_bf16_is_as_close_to_exact_as_the_hooked_bf16_step(preset: str, padded: bool) -> None:
    if not has_fast_bf16(CPU):
        pytest.skip("this CPU has no fast bf16 (no AMX or AVX-512 BF16): auto trains in fp32 here, bf16 is not used")
    assert_fast_bf16_step_is_as_close_to_exact_as_the_hooked_one(preset_model(preset), *batch(preset, padded))


def test_padding_rows_that_fill_a_block_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step rounds its rows up with padding positions (fast_lm.ROW_BLOCK); with a block that takes every
    padding position, a block the padding cannot fill (one padding position) and no block at all, float64
    loss and gradients are the same, so the padding rows reach neither the loss nor any real position."""
    model = preset_model("qf-cpu", torch.float64)
    tokens, mask = batch("qf-cpu", padded=True)
    tokens_one_short, one_short = batch("qf-cpu", padded=False)
    tokens_one_short[3, -2:] = torch.tensor([2, 0])  # row 3 ends one position early: a single padding position
    one_short[3, -1] = False
    for toks, m in ((tokens, mask), (tokens_one_short, one_short)):
        results = []
        for block in (1, 64, int(m.numel())):
            monkeypatch.setattr(fast_lm, "ROW_BLOCK", block)
            results.append(loss_and_grads(model, fast_lm.loss_and_acc, toks, m))
        ref_loss, ref_grads = loss_and_grads(model, lm_loss_and_acc, toks, m)
        for loss, grads in results:
            assert loss == pytest.approx(ref_loss, rel=1e-12)
            assert rel(grads, ref_grads) < 1e-10


def test_eval_logits_equal_the_hooked_forward() -> None:
    model = preset_model("qf-cpu").eval()
    tokens, _ = batch("qf-cpu", padded=True)
    with torch.no_grad():
        # fp32 rounding of two summation orders; measured max difference 3e-6 on logits of size ~10.
        torch.testing.assert_close(fast_lm.logits(model, tokens), model(tokens), rtol=1e-5, atol=5e-5)


def test_hooks_and_training_dropout_take_the_hooked_forward() -> None:
    model = preset_model("ti-cpu")
    tokens, mask = batch("ti-cpu", padded=True, n=4)
    assert fast_lm.supports_fast_lm(model)
    seen = []
    model.blocks[0].attn.hook_pattern.add_hook(lambda pattern, hook: seen.append(pattern.shape))
    assert not fast_lm.supports_fast_lm(model)
    fast_lm_loss_and_acc(model, tokens, mask)
    assert seen == [(4, model.cfg.n_heads, tokens.shape[1], tokens.shape[1])]  # the hook saw every position
    model.reset_hooks()
    assert fast_lm.supports_fast_lm(model)
    model.cfg.dropout = 0.1
    assert not fast_lm.supports_fast_lm(model.train())
    assert fast_lm.supports_fast_lm(model.eval())
    model.cfg.read_in = True  # real-vector inputs: the hooked forward's embedding
    assert not fast_lm.supports_fast_lm(model)


def test_lm_run_through_the_fast_step_resumes_bit_identically(tmp_path: Path) -> None:
    cfg = {"steps": "40", "eval_every": "20", "checkpoint_every": "20", "lr_schedule": "constant", "eval_examples": "50"}
    train(tiny_lm(**cfg), tmp_path / "a", progress=False)
    train(tiny_lm(**{**cfg, "steps": "80"}), tmp_path / "a", progress=False)
    train(tiny_lm(**{**cfg, "steps": "80"}), tmp_path / "b", progress=False)
    assert_bit_identical(tmp_path / "a", tmp_path / "b")


def test_explicit_bf16_without_fast_bf16_warns_once_with_the_measured_cost(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("grokking.precision.has_fast_bf16", lambda device: False)
    warn_emulated_bf16.cache_clear()
    assert resolve_precision("auto", CPU) is None
    assert capsys.readouterr().err == ""
    assert resolve_precision("bf16", CPU) is torch.bfloat16
    assert resolve_precision("bf16", CPU) is torch.bfloat16
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.search(r"a matmul measured \d+\.\dx the time of fp32 here", lines[0])
    warn_emulated_bf16.cache_clear()
