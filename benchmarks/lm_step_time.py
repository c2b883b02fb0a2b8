"""The lab's language-model training step against a plain `nn.TransformerEncoder` step, side by side.

    .venv/bin/python benchmarks/lm_step_time.py [--presets qf-cpu ti-cpu dyck-cpu] [--threads 1 2]
        [--rounds 8] [--steps 4] [--isolated] [--eval] [--compile [max-autotune]] [--profile] [--attention] [--optimizer]

For each preset and thread count, in one process and on the same minibatches (drawn by the run's
own sampler), it times one training step (forward, backward, clipping, AdamW) of:
  - `lab`: the lab's step as `grokking train` runs it (fast_lm.py when no hooks are active);
  - `hooked`: the lab's step through the hooked forward (the step before fast_lm.py);
  - `plain`: an `nn.TransformerEncoder` LM of the same shape (post-LN, ReLU, causal mask, AdamW,
    each batch padded to its longest row), in fp32 as a plain script runs it;
  - `plain-bf16`: the same under bf16 autocast, where the preset's precision is bf16 here.
The variants run interleaved in rotating order for `--rounds` rounds of `--steps` steps, and each
ratio is the median of per-round ratios, so load from other processes on a shared machine hits
every variant alike. With `--isolated` each variant's round runs instead in a fresh process of its
own (the same minibatches in each), so no variant's allocations or cache footprint reach another's,
as when a lab run and a plain script run one after the other. FLOPs per step are counted by
`torch.utils.flop_counter` (matmuls and attention) and divided by the step's CPU time, next to a
large matmul's GFLOP per CPU-second.
Each time is given as wall clock and as this process's CPU time (`time.process_time`), which a
loaded machine inflates less. `--eval` times one evaluation (`LMObjective.evaluate`, fast and
hooked); `--compile` adds the lab step under `torch.compile` (`--compile max-autotune` in that
mode); `--profile` prints where the lab step's time goes; `--attention` times SDPA against
fast_lm's spelled-out attention; `--optimizer` times PyTorch's default AdamW against the fused one
the lab's step uses (the plain step keeps the default).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from grokking import fast_lm
from grokking.allocator import keep_freed_memory
from grokking.config import RunConfig, assemble_config
from grokking.model import sinusoidal_positions
from grokking.objectives import lm_loss_and_acc
from grokking.precision import autocast, has_fast_bf16
from grokking.store import RunDir
from grokking.train import Trainer

CPU = torch.device("cpu")


class PlainLM(nn.Module):
    """What a plain PyTorch script of the preset's shape looks like: embedding, sinusoidal positions,
    a post-LN ReLU `nn.TransformerEncoder` with a causal mask, and a linear unembedding."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        m = cfg.model
        self.embed = nn.Embedding(m.d_vocab, m.d_model)
        self.register_buffer("pos", sinusoidal_positions(m.n_ctx, m.d_model))
        layer = nn.TransformerEncoderLayer(m.d_model, m.n_heads, m.d_mlp, dropout=0.0, activation="relu", batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, m.n_layers, enable_nested_tensor=False)
        self.unembed = nn.Linear(m.d_model, m.d_vocab_out)

    def forward(self, tokens: Tensor) -> Tensor:
        n = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n, device=tokens.device)
        return self.unembed(self.encoder(self.embed(tokens) + self.pos[:n], mask=mask, is_causal=True))


def plain_loss(model: PlainLM, tokens: Tensor, loss_mask: Tensor) -> Tensor:
    """Next-token cross-entropy on the batch padded to its longest row, padding ignored."""
    length = int(loss_mask.sum(-1).max()) + 1
    tokens, loss_mask = tokens[:, :length], loss_mask[:, : length - 1]
    targets = tokens[:, 1:].masked_fill(~loss_mask, -100)
    return nn.functional.cross_entropy(model(tokens)[:, :-1].flatten(0, 1).float(), targets.flatten())


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP per CPU-second (all threads) of the best of `repeats` n x n matmuls at the current thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.process_time()
        a @ b
        best = min(best, time.process_time() - start)
    return 2 * n**3 / best / 1e9


Step = Callable[[Tensor], None]
Times = dict[str, tuple[list[float], list[float]]]  # variant -> (wall, CPU) seconds per step, one entry per round


def make_steps(preset: str, dtype_name: str | None, compile_mode: str | None) -> tuple[dict[str, Step], Trainer, RunConfig]:
    """One step function per variant, each owning its model and AdamW (same init for the lab variants);
    `compile_mode` (None: no compiled variant) is `torch.compile`'s mode for the `lab-compiled` one."""
    cfg = assemble_config(preset, {"precision": dtype_name} if dtype_name else {})
    with tempfile.TemporaryDirectory() as tmp:  # nothing is written: the trainers only build model, data and AdamW
        lab = Trainer(cfg, RunDir(tmp), CPU)
        hooked = Trainer(cfg, RunDir(tmp), CPU, task=lab.task)
        compiled = Trainer(cfg, RunDir(tmp), CPU, task=lab.task) if compile_mode else None
    cfg, tr = lab.cfg, cfg.train  # lab.cfg: the model sized to the task's vocabulary and context
    data = lab.objective

    def trainer_step(trainer: Trainer, loss_fn: Callable) -> Step:
        trainer.model.train()

        def step(idx: Tensor) -> None:
            with autocast(trainer.dtype, CPU):
                loss, _ = loss_fn(trainer.model, data.tokens[idx], data.loss_mask[idx])
            trainer.update(loss)

        return step

    steps = {"lab": trainer_step(lab, fast_lm.loss_and_acc), "hooked": trainer_step(hooked, lm_loss_and_acc)}
    if compiled is not None:
        steps["lab-compiled"] = trainer_step(compiled, torch.compile(fast_lm.loss_and_acc, dynamic=True, mode=compile_mode))
    torch.manual_seed(tr.seed)
    plain = PlainLM(cfg)
    dtypes = {"plain": None} | ({"plain-bf16": torch.bfloat16} if lab.dtype is not None else {})
    for name, dtype in dtypes.items():
        model = copy.deepcopy(plain)
        opt = torch.optim.AdamW(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay, betas=tr.betas)

        def step(idx: Tensor, model: PlainLM = model, opt: torch.optim.Optimizer = opt, dtype: torch.dtype | None = dtype) -> None:
            with autocast(dtype, CPU):
                loss = plain_loss(model, data.tokens[idx], data.loss_mask[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
            opt.step()

        steps[name] = step
    return steps, lab, cfg


def count_flops(step: Step, idx: Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        step(idx)
    return float(counter.get_total_flops())


def timed_rounds(names: list[str], rounds: int, desc: str, time_round: Callable[[str, int], tuple[float, float]]) -> Times:
    """Per-round (wall, CPU) seconds per step of every variant, `time_round(variant, round)` called in rotating order."""
    times: Times = {name: ([], []) for name in names}
    for r in tqdm(range(rounds), desc=desc, leave=False):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = time_round(name, r)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    return times


def timed_steps(step: Step, batches: list[Tensor]) -> tuple[float, float]:
    start, start_cpu = time.perf_counter(), time.process_time()
    for idx in batches:
        step(idx)
    return (time.perf_counter() - start) / len(batches), (time.process_time() - start_cpu) / len(batches)


def round_batches(lab: Trainer, cfg: RunConfig, round_index: int, n_steps: int) -> list[Tensor]:
    """The minibatches of one round: the same for every variant, in this process or in `--isolated`'s children."""
    generator = torch.Generator().manual_seed(cfg.train.seed + 1000 + round_index)
    return [lab.objective.sample(generator) for _ in range(n_steps)]


def isolated_round(preset: str, threads: int, n_steps: int, args: argparse.Namespace) -> Callable[[str, int], tuple[float, float]]:
    """`time_round` for `--isolated`: each variant's round in a fresh process of its own.

    Interleaving variants in one process lets one variant's allocations and cache footprint slow the next;
    here nothing is shared but the machine, as when a lab run and a plain script run one after the other."""
    extra = (["--precision", args.precision] if args.precision else []) + (["--compile", args.compile] if args.compile else [])

    def time_round(name: str, r: int) -> tuple[float, float]:
        command = [sys.executable, __file__, "--presets", preset, "--threads", str(threads), "--steps", str(n_steps)]
        command += ["--child-variant", name, "--child-round", str(r), *extra]
        wall, cpu = json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()[-1])
        return wall, cpu

    return time_round


def child(args: argparse.Namespace) -> None:
    """One variant's timing for `--isolated`: warm up, then print [wall, CPU] seconds per step as JSON.

    The warm-up is as long as the timed part, so that the kernels a new sequence length needs (oneDNN builds
    its bf16 primitives per shape) are mostly built before the clock starts, as they are in a long run."""
    torch.set_num_threads(args.threads[0])
    steps, lab, cfg = make_steps(args.presets[0], args.precision, args.compile)
    step = steps[args.child_variant]
    warm_up = torch.Generator().manual_seed(cfg.train.seed + 1)
    for _ in range(max(2, args.steps)):
        step(lab.objective.sample(warm_up))
    print(json.dumps(timed_steps(step, round_batches(lab, cfg, args.child_round, args.steps))))


def bench(preset: str, threads: int, rounds: int, n_steps: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(threads)
    steps, lab, cfg = make_steps(preset, args.precision, args.compile)
    generator = torch.Generator().manual_seed(cfg.train.seed + 1)
    sample = lambda: lab.objective.sample(generator)
    for step in steps.values():  # warm-up (and compilation)
        for _ in range(2):
            step(sample())
    flops_idx = sample()
    # The compiled step does lab's arithmetic; counting under a dispatch mode would recompile it.
    flops = {name: count_flops(step, flops_idx) for name, step in steps.items() if name != "lab-compiled"}
    flops.setdefault("lab-compiled", flops["lab"])
    names = list(steps)
    if args.isolated:
        time_round = isolated_round(preset, threads, n_steps, args)
    else:
        batches = functools.lru_cache(maxsize=1)(lambda r: round_batches(lab, cfg, r, n_steps))
        time_round = lambda name, r: timed_steps(steps[name], batches(r))
    mode = "isolated" if args.isolated else "interleaved"
    times = timed_rounds(names, rounds, f"{preset} {threads} thread(s), {mode}", time_round)
    peak = {"fp32": matmul_peak(torch.float32)}
    if has_fast_bf16(CPU):
        peak["bf16"] = matmul_peak(torch.bfloat16)
    print(
        f"\n{preset} ({cfg.model.n_layers} layers, precision {cfg.train.precision} -> "
        f"{'bf16' if lab.dtype else 'fp32'}), {threads} thread(s), {mode}; "
        "matmul peak " + ", ".join(f"{k} {v:.0f} GFLOP per CPU-second" for k, v in peak.items())
    )
    print("| variant | wall ms/step | plain / variant, wall | CPU ms/step | plain / variant, CPU | GFLOP/step | GFLOP per CPU-second |")
    print("|---|---|---|---|---|---|---|")
    plain_wall, plain_cpu = times["plain"]
    for name in names:
        wall, cpu = times[name]
        ms, cpu_ms = statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3
        ratio = statistics.median(p / v for p, v in zip(plain_wall, wall))
        cpu_ratio = statistics.median(p / v for p, v in zip(plain_cpu, cpu))
        print(f"| {name} | {ms:.0f} | {ratio:.2f}x | {cpu_ms:.0f} | {cpu_ratio:.2f}x | {flops[name] / 1e9:.2f} | {flops[name] / cpu_ms / 1e6:.1f} |")
    if args.eval:
        time_eval(lab)
    if args.profile:
        profile(steps["lab"], sample)


def time_eval(lab: Trainer) -> None:
    """One evaluation (train/test loss, val/gen metric), fast path and hooked (a no-op hook forces it)."""
    model = lab.model

    def timed() -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        lab.objective.evaluate(model, None)
        return time.perf_counter() - start, time.process_time() - start_cpu

    fast = timed()
    model.hook_dict["hook_embed"].add_hook(lambda x, hook: x)
    hooked = timed()
    model.reset_hooks()
    print(f"evaluation (wall / CPU): fast {fast[0]:.1f} / {fast[1]:.1f} s, hooked {hooked[0]:.1f} / {hooked[1]:.1f} s")


def profile(step: Step, sample: Callable[[], Tensor]) -> None:
    with torch.profiler.profile() as prof:
        for _ in range(5):
            step(sample())
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def attention_kernels(threads: int) -> None:
    """Forward + backward CPU ms of one attention at the qf-cpu shape: SDPA vs fast_lm's two batched matmuls."""
    torch.set_num_threads(threads)
    n_batch, n_heads, n_pos, d_head = 64, 4, 36, 32
    causal = torch.zeros(n_pos, n_pos).masked_fill(~torch.ones(n_pos, n_pos, dtype=torch.bool).tril(), float("-inf"))

    def spelled_out(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (t.flatten(0, 1) for t in (q, k, v))
        return torch.bmm(torch.softmax(torch.baddbmm(causal, q, k.transpose(1, 2), alpha=d_head**-0.5), -1), v)

    def sdpa(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    for dtype in [torch.float32] + ([torch.bfloat16] if has_fast_bf16(CPU) else []):
        row = []
        for name, fn in (("sdpa", sdpa), ("bmm", spelled_out)):
            q, k, v = (torch.randn(n_batch, n_heads, n_pos, d_head, requires_grad=True) for _ in range(3))
            grad = torch.randn(n_batch * n_heads, n_pos, d_head)
            times = []
            for _ in range(12):
                start = time.process_time()
                with autocast(dtype if dtype != torch.float32 else None, CPU):
                    out = fn(q, k, v)
                out.reshape(grad.shape).float().backward(grad)
                times.append(time.process_time() - start)
            row.append(f"{name} {statistics.median(times[2:]) * 1e3:.2f} ms")
        print(f"attention fwd+bwd {dtype}, {threads} thread(s): " + ", ".join(row))


def optimizer_kernels(preset: str, threads: int) -> None:
    """CPU ms of one AdamW step on the preset's model: PyTorch's default (foreach) against the fused one the lab uses."""
    torch.set_num_threads(threads)
    cfg = assemble_config(preset, {})
    with tempfile.TemporaryDirectory() as tmp:
        model = Trainer(cfg, RunDir(tmp), CPU).model
    tr, generator, row = cfg.train, torch.Generator().manual_seed(0), []
    for name, fused in (("default", None), ("fused", True)):
        opt = torch.optim.AdamW(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay, betas=tr.betas, fused=fused)
        times = []
        for _ in range(24):
            for param in model.parameters():
                param.grad = torch.randn(param.shape, generator=generator)
            start = time.process_time()
            opt.step()
            times.append(time.process_time() - start)
        row.append(f"{name} {statistics.median(times[4:]) * 1e3:.2f} ms")
    print(f"AdamW step, {preset}, {threads} thread(s): " + ", ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["qf-cpu", "ti-cpu", "dyck-cpu"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument("--precision", default=None, help="override the presets' precision (fp32, bf16, auto)")
    parser.add_argument("--eval", action="store_true")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "max-autotune"],
        help="add the lab step under torch.compile; max-autotune also tries inductor's C++ GEMM templates",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--attention", action="store_true", help="only time SDPA against the spelled-out attention")
    parser.add_argument("--optimizer", action="store_true", help="only time the default AdamW against the fused one")
    parser.add_argument("--isolated", action="store_true", help="time each variant's round in a fresh process of its own")
    parser.add_argument("--child-variant", help=argparse.SUPPRESS)
    parser.add_argument("--child-round", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    keep_freed_memory()  # as a Trainer does, so the plain step gets the same allocator
    if args.child_variant:
        child(args)
        return
    if args.attention:
        for threads in args.threads:
            attention_kernels(threads)
        return
    if args.optimizer:
        for threads in args.threads:
            for preset in args.presets:
                optimizer_kernels(preset, threads)
        return
    for threads in args.threads:
        for preset in args.presets:
            bench(preset, threads, args.rounds, args.steps, args)


if __name__ == "__main__":
    main()
