"""Which dtype the training matmuls run in: the `precision` key (fp32, bf16 or auto).

Why not a blanket `torch.autocast`: around a small model on CPU its per-op weight casts and small ops
cost more than bf16 saves. So bf16 is applied where the FLOPs are: the 1-layer modular fast path casts
its MLP once per step (fast_forward.py), and language models, whose matmuls are larger, use autocast.
Master weights, AdamW state and the loss stay fp32/fp64, and evaluation always runs in fp32, so metrics
and checkpoints mean the same thing in every precision.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import cache

import torch


def has_fast_bf16(device: torch.device) -> bool:
    """bf16 matmul hardware: a recent GPU, or a CPU with AMX or AVX-512 BF16 instructions."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The matmul dtype for a run: None for fp32, torch.bfloat16 for bf16 (and for auto on fast hardware)."""
    if name == "bf16" and device.type == "cpu" and not has_fast_bf16(device):
        warn_emulated_bf16()
    if name == "bf16" or (name == "auto" and has_fast_bf16(device)):
        return torch.bfloat16
    return None


def bf16_matmul_cost(n: int = 256, repeats: int = 3) -> float:
    """Time of an n x n bf16 matmul over an fp32 one on this CPU (best of `repeats` each)."""

    def best(dtype: torch.dtype) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.bfloat16) / best(torch.float32)


@cache
def warn_emulated_bf16() -> None:
    """One line, once per process: an explicit bf16 on a CPU that emulates it (~30x slower on AVX2-only CPUs)."""
    print(
        f"warning: precision=bf16 on a CPU without AMX or AVX-512 BF16: bf16 is emulated, a matmul measured "
        f"{bf16_matmul_cost():.1f}x the time of fp32 here; precision=auto or fp32 trains in fp32",
        file=sys.stderr,
    )


def describe(dtype: torch.dtype | None) -> str:
    return "bf16 matmuls" if dtype == torch.bfloat16 else "fp32"


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@contextmanager
def subnormals_flushed() -> Iterator[None]:
    """Treat subnormal floats as zero on the CPU while training, then restore PyTorch's default.

    Why: once a model fits its training set (train loss ~1e-7, as every grokked modular run), the softmax
    gives many wrong classes probabilities below fp32's smallest normal number (1.2e-38). x86 CPUs handle
    such subnormals in microcode, many times slower than normal floats, so a late training step costs
    several early ones. What flushing drops is below fp32 resolution next to any gradient it is summed with.
    Measured in docs/results/speed.md (benchmarks/subnormals.py).
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
