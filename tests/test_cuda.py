"""The CUDA path: a step touches only GPU tensors, the fast LM step equals the hooked one there, bf16 runs
there, resume there is exact, and checkpoints written there give the same logits on a CPU.

Every test here needs a CUDA GPU and is skipped without one (marker `cuda`): the CPU suite never needs a
GPU. `pytest -m cuda` selects them; `benchmarks/gpu_check.sh` runs them on a lent GPU and records the result.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from grokking import load_run
from grokking.batched import open_batch
from grokking.config import RunConfig
from grokking.fast_forward import last_position_logits
from grokking.precision import resolve_precision
from grokking.store import RunDir
from grokking.train import Trainer, TrainingInterrupted, train

from conftest import (
    MODULAR_LOSS_RTOL,
    MODULAR_WEIGHT_ATOL,
    assert_bit_identical,
    assert_crash_then_resume_is_bit_identical,
    assert_matches_solo,
    tiny_config,
    tiny_lm,
    train_both,
)
from test_fast_lm import (
    assert_fast_bf16_step_is_as_close_to_exact_as_the_hooked_one,
    assert_fast_step_matches_the_hooked_step_in_fp32,
    batch,
    preset_model,
)

CUDA = torch.device("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU (benchmarks/gpu_check.sh runs these on a lent one)"),
]

# CPU and GPU logits of the same fp32 weights differ only by summation order. Measured on the CPU for these
# tiny models (trained 60/30 steps): fp32 logits are within 2.0e-7 (norm-relative) of float64 ones, so two
# fp32 devices differ by about 4e-7; 1e-5 leaves 25x margin, while TF32 matmuls (~1e-3) would fail it.
CROSS_DEVICE_RTOL = 1e-5
MATMULS = {"mm", "bmm", "addmm", "baddbmm"}


def _on_gpu(cfg: RunConfig) -> RunConfig:
    cfg.set("device", "cuda")
    return cfg


def _lm(**overrides: str) -> RunConfig:
    """A tiny pre-LN digit-addition LM with gradient clipping and linear decay; its data is made in memory."""
    sets = {
        "n_digits": "2",
        "n_train": "300",
        "eval_examples": "40",
        "batch_size": "16",
        "steps": "30",
        "warmup_steps": "5",
        "eval_every": "10",
        "checkpoint_every": "10",
        **overrides,
    }
    return _on_gpu(tiny_lm("addition-cpu", **sets))


CONFIGS: dict[str, Callable[..., RunConfig]] = {
    "modular-full-batch": lambda **o: _on_gpu(tiny_config(**o)),
    "modular-minibatch": lambda **o: _on_gpu(tiny_config(**{"batch_size": "16", **o})),
    "modular-bf16": lambda **o: _on_gpu(tiny_config(**{"precision": "bf16", **o})),
    "lm-fp32": lambda **o: _lm(**o),
    "lm-dropout-bf16": lambda **o: _lm(**{"dropout": "0.1", "precision": "bf16", **o}),  # dropout draws from the CUDA RNG
}


class HostTensors(TorchDispatchMode):
    """Records (op, shape) for every host tensor of more than one element that an op reads or writes.

    0-dim host tensors are left out: AdamW keeps its step count on the host by design.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[tuple[str, tuple[int, ...]]] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs, out))[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0:
                self.ops.add((func._overloadpacket.__name__, tuple(t.shape)))
        return out


class MatmulDtypes(TorchDispatchMode):
    """Records (op, dtype, device type) of every matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, torch.dtype, str]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket.__name__ in MATMULS:
            self.seen.append((func._overloadpacket.__name__, out.dtype, out.device.type))
        return out


def _stored_tensors(trainer: Trainer) -> Iterator[tuple[str, torch.Tensor]]:
    """What a run keeps between steps: weights, buffers, AdamW moments and the objective's data."""
    yield from trainer.model.named_parameters()
    yield from trainer.model.named_buffers()
    for index, state in enumerate(trainer.optimizer.state.values()):
        yield from ((f"adamw[{index}].{k}", v) for k, v in state.items() if k != "step")  # `step` stays on the host by design
    yield from ((f"objective.{k}", v) for k, v in vars(trainer.objective).items() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("name", ["modular-full-batch", "modular-minibatch", "lm-dropout-bf16"])
def test_a_training_step_touches_no_host_tensor_but_its_minibatch_indices(name: str, tmp_path: Path) -> None:
    cfg = CONFIGS[name]()
    trainer = Trainer(cfg, RunDir(tmp_path), CUDA)
    trainer.update(trainer.step_loss()[0])  # AdamW's moments exist from here on
    with HostTensors() as seen:
        loss, train_metrics = trainer.step_loss()
        trainer.update(loss)
        if cfg.task.task == "modular":  # language tasks score generated text on the host, by design
            trainer.record(train_metrics)
    batch = cfg.train.batch_size
    # Minibatches are drawn on the host generator (so a seed draws the same ones on any device), then copied over.
    assert seen.ops == (set() if batch == 0 else {("randint", (batch,)), ("_to_copy", (batch,))})
    stored = dict(_stored_tensors(trainer))
    assert any(k.startswith("adamw") for k in stored) and any(k.startswith("objective") for k in stored)
    assert {k: v.device.type for k, v in stored.items() if v.device.type != "cuda"} == {}


def test_batched_seeds_keep_every_tensor_on_the_gpu_and_follow_their_solo_runs(tmp_path: Path) -> None:
    _, batch = open_batch(CONFIGS["modular-minibatch"](), [0, 1], [tmp_path / "placement" / f"seed{s}" for s in (0, 1)])
    assert batch is not None
    batch.update(batch.step_loss()[0])
    stacked = [*batch.params.values(), *(v for s in batch.optimizer.state.values() for k, v in s.items() if k != "step")]
    assert len(stacked) > len(batch.params) and all(t.device.type == "cuda" for t in stacked)
    train_both(CONFIGS["modular-minibatch"](steps="40"), [0, 1], tmp_path / "runs")
    for seed in (0, 1):
        # The CPU suite's bounds (the contract of grokking/batched.py); a GPU that needs looser ones is a finding.
        assert_matches_solo(tmp_path / "runs", seed, MODULAR_LOSS_RTOL, MODULAR_WEIGHT_ATOL)


def test_auto_precision_is_bf16_on_a_bf16_gpu() -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16")
    assert resolve_precision("auto", CUDA) == torch.bfloat16


def test_bf16_modular_step_runs_its_matmuls_in_bf16_on_the_gpu(tmp_path: Path) -> None:
    trainer = Trainer(CONFIGS["modular-bf16"](), RunDir(tmp_path), CUDA)
    with MatmulDtypes() as forward:
        loss, _ = trainer.step_loss()
    # W_O, the MLP's two products and the unembedding (fast_forward.py); the tables stay fp32.
    assert sum(dtype == torch.bfloat16 and dev == "cuda" for _, dtype, dev in forward.seen) >= 4
    assert loss.dtype == torch.float64
    trainer.update(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(v.dtype == torch.float32 for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step")
    tokens = trainer.objective.train_tokens
    exact, approx = last_position_logits(trainer.model, tokens), last_position_logits(trainer.model, tokens, torch.bfloat16)
    # The CPU test's bound (tests/test_precision.py): bf16 keeps ~3 significant digits; cuBLAS, like oneDNN,
    # accumulates bf16 products in fp32.
    assert (approx - exact).abs().max() < 0.02 * exact.abs().max()
    assert not torch.equal(approx, exact), "bf16 must actually change the arithmetic"


def test_bf16_language_model_runs_every_forward_matmul_in_bf16_on_the_gpu(tmp_path: Path) -> None:
    trainer = Trainer(CONFIGS["lm-dropout-bf16"](dropout="0"), RunDir(tmp_path), CUDA)
    with MatmulDtypes() as forward:
        loss, _ = trainer.step_loss()
    assert forward.seen and all((dtype, dev) == (torch.bfloat16, "cuda") for _, dtype, dev in forward.seen), forward.seen
    fp32 = Trainer(CONFIGS["lm-fp32"](), RunDir(tmp_path / "fp32"), CUDA)
    fp32_loss, _ = fp32.step_loss()  # same seed, so the same weights and minibatch
    assert torch.isclose(loss, fp32_loss, rtol=0.01)  # tests/test_precision.py's bound for bf16 LM losses


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "full"])
def test_fast_lm_step_on_the_gpu_is_the_hooked_step_within_its_precision(padded: bool) -> None:
    """fast_lm.py on cuBLAS, in fp32 and in bf16, with the CPU tests' bounds (tests/test_fast_lm.py)."""
    model = preset_model("qf-cpu").to(CUDA)
    tokens, mask = (t.to(CUDA) for t in batch("qf-cpu", padded))
    assert_fast_step_matches_the_hooked_step_in_fp32(model, tokens, mask)
    if torch.cuda.is_bf16_supported():
        assert_fast_bf16_step_is_as_close_to_exact_as_the_hooked_one(model, tokens, mask)


@pytest.fixture(params=[False, True], ids=["default", "deterministic"])
def deterministic(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """PyTorch's deterministic algorithms: what restores exact resume if the default kernels are not deterministic."""
    if request.param:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    yield request.param
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("name", ["modular-full-batch", "modular-minibatch", "modular-bf16", "lm-dropout-bf16"])
def test_extending_a_gpu_run_matches_training_straight_through(name: str, deterministic: bool, tmp_path: Path) -> None:
    if deterministic and name not in ("modular-minibatch", "lm-dropout-bf16"):
        pytest.skip("the deterministic setting is checked on the minibatch and dropout runs only")
    full = CONFIGS[name]().train.steps

    def config(steps: int) -> RunConfig:
        return CONFIGS[name](steps=str(steps), lr_schedule="constant")  # a linear decay would end at the shorter run's end

    train(config(full // 2), tmp_path / "a", progress=False)
    train(config(full), tmp_path / "a", progress=False)  # loads weights, AdamW and RNG states
    train(config(full), tmp_path / "b", progress=False)
    assert_bit_identical(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("name", ["modular-minibatch", "lm-dropout-bf16"])
def test_a_gpu_run_stopped_by_ctrl_c_resumes_bit_identically(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(CONFIGS[name](), tmp_path / "ref", progress=False)
    real_update = Trainer.update

    def ctrl_c_at_step_25(self: Trainer, loss: torch.Tensor) -> None:
        real_update(self, loss)
        if self.step == 25:
            os.kill(os.getpid(), signal.SIGINT)  # train.drive turns it into a stop between updates

    monkeypatch.setattr(Trainer, "update", ctrl_c_at_step_25)
    with pytest.raises(TrainingInterrupted):
        train(CONFIGS[name](), tmp_path / "stopped", progress=False)
    monkeypatch.setattr(Trainer, "update", real_update)
    train(CONFIGS[name](), tmp_path / "stopped", progress=False)
    assert_bit_identical(tmp_path / "ref", tmp_path / "stopped")


@pytest.mark.parametrize("name", ["modular-full-batch", "modular-minibatch"])
def test_a_gpu_run_that_crashes_between_checkpoints_resumes_bit_identically(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_crash_then_resume_is_bit_identical(CONFIGS[name], tmp_path, monkeypatch)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["modular-full-batch", "lm-fp32"])
def test_checkpoints_written_on_the_gpu_give_the_same_logits_on_a_cpu(name: str, tmp_path: Path) -> None:
    trainer = train(CONFIGS[name](), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    weights = run.weights()
    assert {k: v.device.type for k, v in weights.items()} == {k: "cpu" for k in weights}
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(weights[key], value.cpu()), key  # the file holds the GPU's weights bit for bit
    assert not torch.backends.cuda.matmul.allow_tf32, "the lab trains in true fp32; TF32 would change the tolerance"
    tokens = trainer.task.tokens if trainer.cfg.task.task == "modular" else trainer.objective.tokens[:64].cpu()
    with torch.no_grad():
        gpu = trainer.model.eval()(tokens.to(CUDA)).cpu()
        cpu = run.model()(tokens)
    assert _relative_error(cpu, gpu) < CROSS_DEVICE_RTOL


def test_a_gpu_run_resumes_on_a_cpu(tmp_path: Path) -> None:
    train(CONFIGS["modular-full-batch"](steps="30"), tmp_path / "run", progress=False)
    gpu_row = load_run(tmp_path / "run").metrics.iloc[-1]
    cpu_cfg = tiny_config(steps="60")
    cpu_cfg.set("device", "cpu")
    train(cpu_cfg, tmp_path / "run", progress=False)  # the resume file holds the CUDA RNG state too; the CPU ignores it
    metrics = load_run(tmp_path / "run").metrics
    assert list(metrics.step) == list(range(0, 61, 10))
    cpu_row = metrics[metrics.step == 30].iloc[0]  # recomputed on the CPU from the GPU's step-30 weights
    for column in ("train_loss", "test_loss"):
        # Measured on the CPU at this step: fp32 losses within 6.2e-10 (relative) of float64 ones; 1e-6 leaves 1000x.
        assert abs(cpu_row[column] - gpu_row[column]) < 1e-6 * abs(gpu_row[column]), column
    assert metrics.train_loss.iloc[-1] < metrics.train_loss.iloc[3]
