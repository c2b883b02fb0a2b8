"""Measured bounds behind the test suite's float tolerances, under every CPU kernel set this machine can run.

    .venv/bin/python benchmarks/tolerance_bounds.py            # this CPU's own kernels, then emulated AVX2
    .venv/bin/python benchmarks/tolerance_bounds.py --here     # only the kernels of the current process

Why: a test that compares two *different* computations (batched seeds against solo runs, the modular fast
path against the hooked forward, bf16 against fp32) must allow for rounding, and the allowance must hold on
every CPU the lab runs on (Intel AMX, AMD AVX-512 BF16, AMD AVX2-only). Kernels differ between them: ATen
picks its vectorised kernels by CPU capability, MKL and oneDNN by instruction set. This script re-runs each
comparison under the capability it finds and again with `ATEN_CPU_CAPABILITY=avx2`,
`MKL_ENABLE_INSTRUCTIONS=AVX2` and `ONEDNN_MAX_CPU_ISA=AVX2` (the kernels an AVX2-only machine runs), at 1 and
2 threads, and prints the largest deviation of each. The tests' comments cite these figures; docs/results/
test-suite.md records them with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from grokking import fast_lm, load_run
from grokking.batched import seed_config, train_batched
from grokking.config import RunConfig, assemble_config
from grokking.fast_forward import last_position_logits
from grokking.train import build_model, train

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import TINY_LM_SETS, TINY_SETS  # noqa: E402  (the tests' helpers, which these bounds serve)

AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
LOSS_COLUMNS = ("train_loss", "test_loss")


def configured(preset: str, sets: dict[str, str]) -> RunConfig:
    return assemble_config(preset, sets)


# The tests' own tiny configurations, with this script's shorter schedules.
TINY_MODULAR = {**TINY_SETS, "steps": "100"}
TINY_LM = {**TINY_LM_SETS, "steps": "20", "eval_every": "10", "checkpoint_every": "10", "eval_examples": "50"}


def batched_vs_solo(cfg: RunConfig, seeds: list[int], root: Path) -> dict[str, float]:
    """Largest relative loss gap, accuracy gap and absolute weight gap (attention key biases apart) of batched seeds."""
    train_batched(cfg, seeds, [root / "batched" / f"seed{s}" for s in seeds], progress=False)
    worst = {"loss_rel": 0.0, "acc_abs": 0.0, "weight_abs": 0.0}
    for s in seeds:
        train(seed_config(cfg, s), root / "solo" / f"seed{s}", progress=False)
        batched, solo = load_run(root / "batched" / f"seed{s}"), load_run(root / "solo" / f"seed{s}")
        for column in batched.metrics.columns:
            a, b = batched.metrics[column].to_numpy(), solo.metrics[column].to_numpy()
            if column in LOSS_COLUMNS:
                worst["loss_rel"] = max(worst["loss_rel"], float((abs(a - b) / abs(b)).max()))
            elif column.endswith("acc"):
                worst["acc_abs"] = max(worst["acc_abs"], float(abs(a - b).max()))
        for step in solo.steps:
            wb, ws = batched.weights(step), solo.weights(step)
            for name in ws:
                if not name.endswith("attn.b_K"):
                    worst["weight_abs"] = max(worst["weight_abs"], (wb[name] - ws[name]).abs().max().item())
    return worst


def bf16_vs_fp32(preset: str, sets: dict[str, str], root: Path) -> float:
    """Largest relative gap between bf16 and fp32 training losses of one tiny run."""
    losses = {}
    for precision in ("fp32", "bf16"):
        train(configured(preset, {**sets, "precision": precision}), root / precision, progress=False)
        losses[precision] = torch.tensor(load_run(root / precision).metrics.train_loss.to_numpy())
    return ((losses["bf16"] - losses["fp32"]).abs() / losses["fp32"].abs()).max().item()


def fast_path_vs_hooked() -> dict[str, float]:
    """The modular table fast path against the hooked forward: logits and gradients (relative to their scale)."""
    cfg = configured("quick", TINY_MODULAR)
    from grokking.tasks.registry import build_task, sized

    task = build_task(cfg)
    model = build_model(sized(cfg, task))
    tokens, labels = task.tokens, task.labels
    fast, full = last_position_logits(model, tokens), model(tokens)[:, -1]
    grads = []
    for fn in (lambda: last_position_logits(model, tokens), lambda: model(tokens)[:, -1]):
        model.zero_grad()
        torch.nn.functional.cross_entropy(fn().double(), labels).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    grad_gap = max(((grads[0][k] - grads[1][k]).abs().max() / grads[1][k].abs().max().clamp_min(1e-30)).item() for k in grads[0])
    return {"logit_rel": ((fast - full).abs().max() / full.abs().max()).item(), "grad_rel": grad_gap}


def measure_here() -> dict[str, float]:
    # Batched LM seeds run the hooked forward under vmap; solo runs would take fast_lm.py's step, another
    # computation with its own test (tests/test_fast_lm.py). The batching itself is what is compared here.
    fast_lm.supports_fast_lm = lambda model: False
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["GROKKING_DATA_CACHE"] = str(root / "data-cache")
        lm = batched_vs_solo(configured("qf-cpu", TINY_LM), [0, 1], root / "lm")
        modular = batched_vs_solo(configured("quick", TINY_MODULAR), [0, 1, 2], root / "modular")
        clipped = batched_vs_solo(
            configured("quick", {**TINY_MODULAR, "steps": "60", "batch_size": "16", "grad_clip": "0.05"}), [3, 4], root / "clipped"
        )
        modular_bf16 = batched_vs_solo(configured("quick", {**TINY_MODULAR, "steps": "60", "precision": "bf16"}), [0, 1], root / "modular-bf16")
        bf16 = bf16_vs_fp32("quick", {**TINY_MODULAR, "steps": "40"}, root / "bf16")
        lm_bf16 = bf16_vs_fp32("qf-cpu", {**TINY_LM, "steps": "40", "eval_every": "20", "checkpoint_every": "20"}, root / "lm-bf16")
    return {
        **{f"lm_batched_{k}": v for k, v in lm.items()},
        **{f"modular_batched_{k}": v for k, v in modular.items()},
        **{f"modular_clipped_batched_{k}": v for k, v in clipped.items()},
        **{f"modular_bf16_batched_{k}": v for k, v in modular_bf16.items()},
        "bf16_vs_fp32_loss_rel": bf16,
        "lm_bf16_vs_fp32_loss_rel": lm_bf16,
        **{f"fast_path_{k}": v for k, v in fast_path_vs_hooked().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--here", action="store_true", help="measure only with the current process's kernels")
    args = parser.parse_args()
    if args.here:
        print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), **measure_here()}))
        return
    rows = []
    for label, env in (("native", {}), ("avx2 kernels", AVX2_KERNELS)):
        for threads in (1, 2):
            full_env = {**os.environ, **env, "OMP_NUM_THREADS": str(threads)}
            out = subprocess.run([sys.executable, __file__, "--here"], env=full_env, capture_output=True, text=True, check=True)
            rows.append({"kernels": label, "threads": threads, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), flush=True)
    keys = [k for k in rows[0] if k not in ("kernels", "threads", "capability")]
    print("\n| measure | " + " | ".join(f"{r['kernels']} ({r['capability']}) {r['threads']}t" for r in rows) + " | max |")
    print("|---|" + "---|" * (len(rows) + 1))
    for key in keys:
        values = [r[key] for r in rows]
        print(f"| {key} | " + " | ".join(f"{v:.2e}" for v in values) + f" | {max(values):.2e} |")


if __name__ == "__main__":
    main()
