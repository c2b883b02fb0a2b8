"""Fourier progress measures: known answers on hand-made signals and on a hand-built Fourier-algorithm model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grokking.analysis import fourier
from grokking.analysis.norms import per_matrix_norms, total_sq_weight_norm
from grokking.config import ModelConfig, preset_config
from grokking.fast_forward import last_position_logits
from grokking.model import Transformer
from grokking.tasks.modular import ModularTask

P = 113
KEY_FREQS = [5, 17, 41]
N_PHASES = 16  # phases per frequency: the ReLU harmonics that alias onto cos(2 phi) are then 14 and 18 (tiny)
OUTPUT_SCALE = 60.0  # logit scale of the hand-built model: full loss ~1e-2, 100% accuracy


def wave(p: int, k: int, x: torch.Tensor, trig=torch.cos) -> torch.Tensor:
    return trig(2 * math.pi * k * x / p)


def grid_coords(p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a, b, c as broadcastable float64 [p, 1, 1], [1, p, 1], [1, 1, p] tensors."""
    x = torch.arange(p, dtype=torch.float64)
    return x[:, None, None], x[None, :, None], x[None, None, :]


# --- basis, transforms, norms, gini ---------------------------------------------------------------


@pytest.mark.parametrize("p", [7, P])
def test_basis_is_orthonormal_with_cos_before_sin(p: int) -> None:
    basis, names = fourier.fourier_basis(p)
    torch.testing.assert_close(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-12, rtol=0)
    assert names[:5] == ["const", "cos 1", "sin 1", "cos 2", "sin 2"] and len(names) == p
    x = torch.arange(p, dtype=torch.float64)
    torch.testing.assert_close(basis[3], wave(p, 2, x) / wave(p, 2, x).norm())
    torch.testing.assert_close(basis[4], wave(p, 2, x, torch.sin) / wave(p, 2, x, torch.sin).norm())


def test_fft_transforms_act_on_the_named_axes() -> None:
    x = torch.randn(13, 4, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fourier.fft1d(x, dim=2), fourier.fft1d(x.movedim(2, 0), 0).movedim(0, 2))
    a, b, _ = grid_coords(13)
    coeffs = fourier.fft2d((wave(13, 3, a) * wave(13, 3, b, torch.sin))[..., 0])
    expected = torch.zeros(13, 13, dtype=torch.float64)
    expected[5, 6] = 13 / 2  # rows cos 3 (index 5) x sin 3 (index 6); |cos| |sin| = 13/2
    torch.testing.assert_close(coeffs, expected, atol=1e-10, rtol=0)


def test_frequency_norms_combine_cos_and_sin_with_const_at_index_0() -> None:
    x = torch.arange(P, dtype=torch.float64)
    W = torch.stack([2 * wave(P, 3, x), wave(P, 7, x, torch.sin) + 1], dim=1)
    norms = fourier.frequency_norms(W)
    expected = torch.zeros((P - 1) // 2 + 1, dtype=torch.float64)
    expected[0], expected[3], expected[7] = math.sqrt(P), 2 * math.sqrt(P / 2), math.sqrt(P / 2)
    torch.testing.assert_close(norms, expected, atol=1e-10, rtol=0)


def test_gini_known_values() -> None:
    assert fourier.gini(torch.full((56,), 3.0)).item() == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.zeros(56)
    one_hot[9] = 2.0
    assert fourier.gini(one_hot).item() == pytest.approx(55 / 56)
    # sorted [0, 1, 3], |x|_1 = 4: 1 - 2 * (0 * 2.5 + 1 * 1.5 + 3 * 0.5) / (4 * 3) = 0.5
    assert fourier.gini(torch.tensor([3.0, 0.0, 1.0])).item() == pytest.approx(0.5)
    assert fourier.gini(torch.tensor([[30.0, 0.0, 10.0]])).tolist() == pytest.approx([0.5])


# --- neurons -----------------------------------------------------------------------------------------


def test_neuron_fractions_and_clusters_on_hand_made_neurons() -> None:
    p, w, u = 31, 4, 11
    a, b, _ = grid_coords(p)
    a, b = a[..., 0], b[..., 0]
    neurons = torch.stack(
        [
            wave(p, w, a) * wave(p, w, b) + 5.0,  # a product: all variance in w's block
            wave(p, w, a + 0.3) + wave(p, w, b, torch.sin),  # 1-D terms sit in the block's const rows/columns
            torch.zeros(p, p, dtype=torch.float64),  # dead
            wave(p, w, a) * wave(p, w, b) + wave(p, u, a) * wave(p, u, b),  # split evenly over two frequencies
        ],
        dim=-1,
    )
    fractions = fourier.neuron_frequency_fractions(neurons)
    expected = torch.zeros(4, (p - 1) // 2, dtype=torch.float64)
    expected[0, w - 1] = expected[1, w - 1] = 1.0
    expected[3, w - 1] = expected[3, u - 1] = 0.5
    torch.testing.assert_close(fractions, expected, atol=1e-10, rtol=0)
    assert fourier.neuron_clusters(fractions).tolist() == [w, w, -1, -1]
    assert fourier.neuron_clusters(fractions, threshold=0.5).tolist()[:3] == [w, w, -1]


# --- restricted / excluded logits and cos(w(a+b-c)) coefficients --------------------------------------


def test_restricted_and_excluded_add_back_to_the_logits() -> None:
    torch.manual_seed(0)
    logits = torch.randn(13, 13, 13, dtype=torch.float64)
    restricted = fourier.restricted_logits(logits, [2, 5])
    excluded = fourier.excluded_logits(logits, [2, 5])
    torch.testing.assert_close(restricted - logits.mean(dim=(0, 1)) + excluded, logits)


def test_restricted_keeps_exactly_the_sum_frequency_part() -> None:
    p, w, u = 13, 3, 4
    a, b, c = grid_coords(p)
    signal = 3 * wave(p, w, a + b - c) + wave(p, u, a + b, torch.sin) * wave(p, 1, c)
    other = wave(p, u, a) + wave(p, w, a - b) * wave(p, w, c)  # orthogonal to every cos/sin(w'(a+b))
    logits = (signal + other).expand(p, p, p)
    torch.testing.assert_close(fourier.restricted_logits(logits, [w, u]), signal + logits.mean(dim=(0, 1)))
    torch.testing.assert_close(fourier.excluded_logits(logits, [w, u]), other.expand(p, p, p))
    torch.testing.assert_close(fourier.excluded_logits(logits, [w]), (logits - 3 * wave(p, w, a + b - c)))


def test_losses_match_cross_entropy_of_the_logit_grids() -> None:
    p, freqs = 13, [2, 5]
    torch.manual_seed(1)
    logits = 3 * torch.randn(p, p, p)
    labels = torch.randint(0, p, (p, p))  # arbitrary labels: the sum-table shortcut must not assume a+b
    mask = torch.rand(p, p) < 0.4

    def ce(grid: torch.Tensor, keep: torch.Tensor) -> float:
        return F.cross_entropy(grid.reshape(p * p, p)[keep.reshape(-1)], labels.reshape(-1)[keep.reshape(-1)]).item()

    everything = torch.ones(p, p, dtype=torch.bool)
    assert fourier.restricted_loss(logits, labels, freqs) == pytest.approx(ce(fourier.restricted_logits(logits, freqs), everything))
    assert fourier.excluded_loss(logits, labels, mask, freqs) == pytest.approx(ce(fourier.excluded_logits(logits, freqs), mask))
    assert fourier.restricted_loss_per_freq(logits, labels, freqs).tolist() == pytest.approx(
        [fourier.restricted_loss(logits, labels, [w]) for w in freqs]
    )
    assert fourier.excluded_loss_per_freq(logits, labels, mask, freqs).tolist() == pytest.approx(
        [fourier.excluded_loss(logits, labels, mask, [w]) for w in freqs]
    )


def test_cos_coefficients_known_answer_and_brute_force() -> None:
    p, w, u = 13, 3, 5
    a, b, c = grid_coords(p)
    logits = 3 * wave(p, w, a + b - c) + wave(p, u, a + b - c) + wave(p, 2, a) + wave(p, 4, b, torch.sin)
    coefs, fractions = fourier.cos_coefficients(logits, [w, u])
    norm = math.sqrt(p**3 / 2)  # |cos(w(a+b-c))| over the p^3 cube
    assert coefs.tolist() == pytest.approx([3 * norm, norm])
    assert fractions.tolist() == pytest.approx([0.9, 0.1])  # per-input constants are not logit variance

    torch.manual_seed(2)
    noise = torch.randn(p, p, p, dtype=torch.float64)
    direction = wave(p, u, a + b - c)
    assert fourier.cos_coefficients(noise, [u])[0].item() == pytest.approx((noise * direction).sum().item() / direction.norm().item())


# --- a hand-built model that implements the Fourier multiplication algorithm ----------------------------


def fourier_algorithm_model(freqs: list[int], p: int = P) -> Transformer:
    """1 layer; uniform attention sums the (cos, sin) embeddings of a and b; ReLU neurons multiply them.

    Residual dims [0, 2n): cos/sin w t per key w (read by the MLP); dims [2n, 4n): the MLP's output,
    read by W_U as cos/sin(w c). Neuron (w, phi) computes ReLU((cos(wa+phi) + cos(wb+phi))/3) and writes
    cos(2 phi + w c), so the logits are ~ sum_w |cos(w(a-b)/2)| cos(w(a+b-c)).
    """
    n = len(freqs)
    cfg = ModelConfig(d_model=4 * n, n_heads=1, d_head=2 * n, d_mlp=n * N_PHASES, d_vocab=p + 1, d_vocab_out=p, n_ctx=3)
    model = Transformer(cfg)
    x = torch.arange(p, dtype=torch.float64)
    phases = 2 * math.pi * torch.arange(N_PHASES, dtype=torch.float64) / N_PHASES
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()  # W_Q = W_K = 0: uniform attention; `=` and positions embed to zero
        attn.W_V[0, : 2 * n] = torch.eye(2 * n)
        attn.W_O[0, :, : 2 * n] = torch.eye(2 * n)
        for i, w in enumerate(freqs):
            cos_in, sin_in, cos_out, sin_out = 2 * i, 2 * i + 1, 2 * n + 2 * i, 2 * n + 2 * i + 1
            neurons = slice(i * N_PHASES, (i + 1) * N_PHASES)
            model.embed.W_E[:p, cos_in], model.embed.W_E[:p, sin_in] = wave(p, w, x), wave(p, w, x, torch.sin)
            mlp.W_in[cos_in, neurons], mlp.W_in[sin_in, neurons] = torch.cos(phases), -torch.sin(phases)
            mlp.W_out[neurons, cos_out] = OUTPUT_SCALE * torch.cos(2 * phases)
            mlp.W_out[neurons, sin_out] = -OUTPUT_SCALE * torch.sin(2 * phases)
            model.unembed.W_U[cos_out], model.unembed.W_U[sin_out] = wave(p, w, x), wave(p, w, x, torch.sin)
    return model


@pytest.fixture(scope="module")
def task() -> ModularTask:
    return ModularTask.from_config(preset_config("nanda-p113").task)


@pytest.fixture(scope="module")
def algorithm_model() -> Transformer:
    return fourier_algorithm_model(KEY_FREQS)


def test_hand_built_model_is_recognised_as_the_fourier_algorithm(algorithm_model: Transformer, task: ModularTask) -> None:
    with torch.no_grad():
        logits = last_position_logits(algorithm_model, task.tokens)
    assert (logits.argmax(-1) == task.labels).all(), "the construction must solve the task"
    full_loss = F.cross_entropy(logits.double(), task.labels).item()
    assert full_loss < 0.05

    assert fourier.key_frequencies(algorithm_model, task) == KEY_FREQS
    w_e_norms = fourier.embedding_frequency_norms(algorithm_model, P)
    assert fourier.key_frequencies_from_embedding(w_e_norms) == KEY_FREQS
    # Three equal non-zero frequency norms out of 56: G = 1 - 3/56 exactly; W_L likewise.
    assert fourier.gini(w_e_norms[1:]).item() == pytest.approx(1 - 3 / 56)
    assert fourier.gini(fourier.logit_map_frequency_norms(algorithm_model, P)[1:]).item() == pytest.approx(1 - 3 / 56)

    measures = fourier.checkpoint_measures(algorithm_model, task, KEY_FREQS)
    # Tolerance 0.02 nats (0.4% of chance, ln 113 = 4.73): the restricted logits keep only the mean
    # 2/pi of the |cos(w(a-b)/2)| envelope, a constant margin, so they lose slightly *less* than the
    # full model (~1e-5 vs ~1e-2 here); any broken projection would cost nats, not hundredths.
    assert abs(measures["restricted_loss"] - full_loss) < 0.02
    assert measures["excluded_loss"] > math.log(P)  # without the circuit the training set is lost
    for w in KEY_FREQS:
        # One frequency alone is a weaker, but still better-than-chance, predictor.
        assert measures["restricted_loss"] < measures[f"restricted_loss_k{w}"] < math.log(P)
        assert measures[f"cos_coef_k{w}"] > 0 and measures[f"cos_frac_k{w}"] > 0.2


def test_checkpoint_measures_agree_with_the_standalone_functions(algorithm_model: Transformer, task: ModularTask) -> None:
    with torch.no_grad():
        logits = last_position_logits(algorithm_model, task.tokens)
    grid = logits.view(P, P, P)
    labels, mask = task.labels.view(P, P), task.is_train_grid()
    measures = fourier.checkpoint_measures(algorithm_model, task, KEY_FREQS, logits=logits)
    assert measures == fourier.checkpoint_measures(algorithm_model, task, KEY_FREQS)
    assert measures["restricted_loss"] == pytest.approx(fourier.restricted_loss(grid, labels, KEY_FREQS))
    assert measures["excluded_loss"] == pytest.approx(fourier.excluded_loss(grid, labels, mask, KEY_FREQS))
    per_freq = fourier.excluded_loss_per_freq(grid, labels, mask, KEY_FREQS).tolist()
    assert [measures[f"excluded_loss_k{w}"] for w in KEY_FREQS] == pytest.approx(per_freq)
    # With no key frequencies (a run that never groks) nothing is removed: excluded loss is the train loss.
    empty = fourier.checkpoint_measures(algorithm_model, task, [], logits=logits)
    mask_rows = mask.reshape(-1)
    assert empty["excluded_loss"] == pytest.approx(F.cross_entropy(logits.double()[mask_rows], task.labels[mask_rows]).item())
    assert empty["restricted_loss"] == pytest.approx(math.log(P), rel=0.01)  # the class means alone are flat here


def test_random_init_model_has_no_key_frequencies(task: ModularTask) -> None:
    cfg = preset_config("nanda-p113").model
    cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx = task.d_vocab, task.d_vocab_out, task.n_ctx
    torch.manual_seed(0)
    model = Transformer(cfg)
    assert fourier.key_frequencies(model, task) == []  # random neurons spread variance over all frequencies
    norms = fourier.embedding_frequency_norms(model, P)
    assert fourier.key_frequencies_from_embedding(norms) != KEY_FREQS
    assert fourier.gini(norms[1:]).item() < 0.3


# --- weight norms -----------------------------------------------------------------------------------------


def test_weight_norms_count_parameters_not_zero_buffers() -> None:
    cfg = ModelConfig(d_vocab=14, d_vocab_out=13, n_ctx=3, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    torch.manual_seed(0)
    model = Transformer(cfg)
    expected = sum(float((param.detach().double() ** 2).sum()) for param in model.parameters())
    assert total_sq_weight_norm(model) == pytest.approx(expected)
    assert total_sq_weight_norm(model.state_dict()) == pytest.approx(expected)  # the bias buffers are zero
    norms = per_matrix_norms(model)
    assert set(norms) == {name for name, _ in model.named_parameters()}
    assert norms["blocks.0.mlp.W_in"] == pytest.approx(model.blocks[0].mlp.W_in.norm().item(), rel=1e-6)


# --- other operations: a - b, and the ones without a Fourier basis ------------------------------------------


def subtraction_algorithm_model(freqs: list[int], p: int = P) -> Transformer:
    """The Fourier algorithm for a - b: like `fourier_algorithm_model`, but b enters conjugated.

    Two heads, each fixed by the positional embeddings on one operand (head 0 reads a at position 0,
    head 1 reads b at position 1, scores ~25 nats apart); head 1's W_O flips the sign of the sin
    dims, so the MLP sees cos/sin(wa) + cos/sin(-wb) and its neurons compute functions of w(a-b)/2.
    The logits are ~ sum_w |cos(w(a+b)/2)| cos(w(a-b-c)).
    """
    n = len(freqs)
    pos = 4 * n  # dims [4n, 4n+3): one per position
    cfg = ModelConfig(d_model=4 * n + 3, n_heads=2, d_head=2 * n, d_mlp=n * N_PHASES, d_vocab=p + 1, d_vocab_out=p, n_ctx=3)
    model = Transformer(cfg)
    x = torch.arange(p, dtype=torch.float64)
    phases = 2 * math.pi * torch.arange(N_PHASES, dtype=torch.float64) / N_PHASES
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    conj = torch.diag(torch.tensor([1.0, -1.0]).repeat(n))
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.pos_embed.W_pos[:, pos : pos + 3] = torch.eye(3)
        for head in (0, 1):
            attn.W_Q[head, pos + 2, 0] = 1.0  # the `=` position asks ...
            attn.W_K[head, pos + head, 0] = 60.0  # ... for operand `head` (score 60/sqrt(2n) ~ 25)
            attn.W_V[head, : 2 * n, : 2 * n] = torch.eye(2 * n)
        attn.W_O[0, :, : 2 * n] = torch.eye(2 * n)
        attn.W_O[1, :, : 2 * n] = conj
        for i, w in enumerate(freqs):
            cos_in, sin_in, cos_out, sin_out = 2 * i, 2 * i + 1, 2 * n + 2 * i, 2 * n + 2 * i + 1
            neurons = slice(i * N_PHASES, (i + 1) * N_PHASES)
            model.embed.W_E[:p, cos_in], model.embed.W_E[:p, sin_in] = wave(p, w, x), wave(p, w, x, torch.sin)
            mlp.W_in[cos_in, neurons], mlp.W_in[sin_in, neurons] = torch.cos(phases) / 3, -torch.sin(phases) / 3
            mlp.W_out[neurons, cos_out] = OUTPUT_SCALE * torch.cos(2 * phases)
            mlp.W_out[neurons, sin_out] = -OUTPUT_SCALE * torch.sin(2 * phases)
            model.unembed.W_U[cos_out], model.unembed.W_U[sin_out] = wave(p, w, x), wave(p, w, x, torch.sin)
    return model


def modular_task(operation: str, p: int = P) -> ModularTask:
    cfg = preset_config("nanda-p113").task
    cfg.operation, cfg.p = operation, p
    return ModularTask.from_config(cfg)


def test_subtraction_directions_keep_exactly_the_difference_part() -> None:
    p, w, u = 13, 3, 4
    a, b, c = grid_coords(p)
    signal = 3 * wave(p, w, a - b - c) + wave(p, u, a - b, torch.sin) * wave(p, 1, c)
    other = wave(p, u, a) + wave(p, w, a + b) * wave(p, w, c)  # orthogonal to every cos/sin(w'(a-b))
    logits = (signal + other).expand(p, p, p)
    torch.testing.assert_close(fourier.restricted_logits(logits, [w, u], "subtract"), signal + logits.mean(dim=(0, 1)))
    torch.testing.assert_close(fourier.excluded_logits(logits, [w, u], "subtract"), other.expand(p, p, p))
    assert fourier.sum_index(p, "subtract")[5, 7].item() == (5 - 7) % p
    coefs, _ = fourier.cos_coefficients(logits, [w], "subtract")
    assert coefs.item() == pytest.approx(3 * math.sqrt(p**3 / 2))  # |cos(w(a-b-c))| over the cube
    # The addition directions see none of it: the a-b signal is orthogonal to every cos/sin(w(a+b)).
    assert fourier.cos_coefficients(signal.expand(p, p, p), [w])[0].item() == pytest.approx(0.0, abs=1e-9)


def test_hand_built_subtraction_circuit_is_recognised() -> None:
    task = modular_task("subtract")
    model = subtraction_algorithm_model(KEY_FREQS)
    with torch.no_grad():
        logits = last_position_logits(model, task.tokens)
    assert (logits.argmax(-1) == task.labels).all(), "the construction must solve a - b"
    full_loss = F.cross_entropy(logits.double(), task.labels).item()
    assert fourier.key_frequencies(model, task) == KEY_FREQS
    measures = fourier.checkpoint_measures(model, task, KEY_FREQS, logits=logits)
    # Same tolerance as for a + b above (0.02 nats): the restricted logits keep a constant 2/pi envelope.
    assert abs(measures["restricted_loss"] - full_loss) < 0.02
    assert measures["excluded_loss"] > math.log(P)
    assert all(measures[f"cos_coef_k{w}"] > 0 for w in KEY_FREQS)
    # Measured along the a + b directions (the old, hard-wired ones) the circuit is invisible.
    grid = logits.double().view(P, P, P)
    assert fourier.restricted_loss(grid, task.labels.view(P, P), KEY_FREQS, "add") > 0.95 * math.log(P)
    selection = fourier.select_key_frequencies(model, task)
    assert selection.freqs == KEY_FREQS and selection.explained
    assert set(selection.rules.values()) == {"neurons"}


@pytest.mark.parametrize("operation", ["x2xyy2", "random"])
def test_operations_without_a_fourier_basis_are_refused(operation: str) -> None:
    task = modular_task(operation, p=13)
    assert not fourier.fourier_applicable(operation)
    model = fourier_algorithm_model([2], p=13)
    with pytest.raises(ValueError, match="not applicable"):
        fourier.checkpoint_measures(model, task, [2])
    assert fourier.fourier_applicable("add") and fourier.fourier_applicable("subtract")


# --- key-frequency selection that explains the logits ---------------------------------------------------------


def test_selection_widens_by_embedding_norm_when_neurons_miss_a_key(algorithm_model: Transformer, task: ModularTask) -> None:
    # Each key has 16 neurons: asking for 17 makes the neuron rule find none, as a too-strict cut would.
    selection = fourier.select_key_frequencies(algorithm_model, task, min_neurons=N_PHASES + 1)
    assert selection.freqs == KEY_FREQS
    assert selection.rules == {w: "embedding norm" for w in KEY_FREQS}
    assert selection.explained and selection.restricted_loss <= selection.factor * selection.test_loss
    # With the default cut every key comes from its neurons and nothing is added.
    default = fourier.select_key_frequencies(algorithm_model, task)
    assert default.rules == {w: "neurons" for w in KEY_FREQS}
    assert default.to_dict()["key_frequency_check"]["explained"] is True


def test_selection_stops_at_small_embedding_norms(algorithm_model: Transformer, task: ModularTask) -> None:
    # Two of the three keys removed from W_E's candidates by a norm floor above theirs: no widening is
    # possible, so the check reports the set as not explaining the logits instead of inventing keys.
    with torch.no_grad():
        model = fourier_algorithm_model(KEY_FREQS)
        model.embed.W_E[:P, 2:] *= 0.05  # frequencies 17 and 41 at 5% of 5's norm (below the 10% floor)
        model.blocks[0].mlp.W_in[2:] *= 20.0  # ... while the MLP still reads them at full strength
    selection = fourier.select_key_frequencies(model, task, min_neurons=N_PHASES + 1)
    assert selection.freqs == [5] and selection.rules == {5: "embedding norm"}
    assert not selection.explained


def test_gini_of_an_all_zero_vector_is_zero() -> None:
    assert fourier.gini(torch.zeros(56)).item() == 0.0
    assert fourier.gini(torch.zeros(2, 5)).tolist() == [0.0, 0.0]
