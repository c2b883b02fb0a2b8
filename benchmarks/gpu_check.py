"""The GPU check: CUDA tests, a whole `nanda-p113` run, batched seeds and the paper-scale presets, timed in one call.

    bash benchmarks/gpu_check.sh [--dry-run] [--out DIR]     (the wrapper installs the carried wheels, then runs this)

Why one script: a lent GPU comes for 15 minutes in all, so the check is prepared here and must fit one call
(8 minutes on an H200). Each step runs in a child process under its own time limit (SIGTERM first, so a
training run saves its state), so a hang or a CUDA error costs that step only; the results are rewritten to
OUT/gpu_check.json and OUT/gpu_check.md after every step, so a check cut short still reports what it
finished. `--dry-run` runs the same steps on the CPU at toy sizes (tests/test_gpu_check_dry_run.py), so the
script cannot rot between loans.

Steps, in order (the long run last, so the short figures survive if it overruns): environment, the CUDA tests
(`pytest -m cuda`), ms/step of `qf-paper` and `qf-cpu` in fp32 and bf16 with their projected full-run time,
8 batched `nanda-p113` seeds against one for 2k steps, a profile of where a step's time goes, `nanda-p113`
for all 25k steps through the CLI and `grokking analyze` on it, and `icl-paper` timed when that preset exists.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 450  # of the 8 minutes; the rest is the wrapper's wheel install and the machine's start-up margin
DRY_SLACK = 4  # --dry-run stretches every limit: a loaded 2-core CPU (or one without bf16) is slower than an H200 at toy sizes
# Toy sizes for --dry-run: every step's code path at a cost of seconds on one CPU core.
TOY_MODULAR = {
    "p": "23",
    "d_model": "32",
    "n_heads": "2",
    "d_head": "16",
    "d_mlp": "64",
    "frac_train": "0.5",
    "eval_every": "10",
    "checkpoint_every": "10",
}
TOY_LM = {"n_layers": "1", "d_model": "32", "n_heads": "2", "d_head": "16", "d_mlp": "64", "batch_size": "4", "eval_examples": "8"}
NANDA_STEPS = 25_000


# ---- one step's work, run inside a child process (`--worker NAME`) -------------------------------------------


def _device(dry: bool) -> Any:
    import torch

    return torch.device("cpu" if dry else "cuda")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _config(preset: str, precision: str, dry: bool, toy: dict[str, str], steps: int | None = None) -> Any:
    from grokking.config import assemble_config

    return assemble_config(preset, {**(toy if dry else {}), "precision": precision}, steps=steps, device="cpu" if dry else "cuda")


def _by_precision(preset: str, dry: bool) -> Iterator[tuple[str, Any, Any]]:
    """(precision, config, task) in fp32 then bf16; the task is built once (a language's data takes seconds to encode)."""
    from grokking.config import RunConfig
    from grokking.tasks.registry import build_task, sized

    cfg = _config(preset, "fp32", dry, _toy_for(preset))
    task = build_task(cfg)
    cfg = sized(cfg, task)  # the vocabulary sizes, which the bf16 copy keeps
    for precision in ("fp32", "bf16"):
        copy = RunConfig.from_dict(cfg.to_dict())
        copy.set("precision", precision)
        yield precision, copy, task


def _toy_for(preset: str) -> dict[str, str]:
    from grokking.config import preset_config

    return TOY_MODULAR if preset_config(preset).task.task == "modular" else TOY_LM


def _ms_per_step(loop: Any, device: Any, steps: int, warmup: int) -> float:
    """Optimiser steps only (no evaluation, no checkpoint), after `warmup` untimed ones."""
    for _ in range(warmup):
        loop.update(loop.step_loss()[0])
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.update(loop.step_loss()[0])
    _sync(device)
    return (time.perf_counter() - start) / steps * 1000


def _syncs_per_step(loop: Any, device: Any, steps: int = 3) -> float | None:
    """Host-device synchronisations per optimiser step, counted by PyTorch's sync debug mode (GPU only)."""
    import warnings

    import torch

    if device.type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                loop.update(loop.step_loss()[0])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught) / steps


def _peak_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if device.type == "cuda" else None


def worker_environment(dry: bool) -> dict[str, Any]:
    import importlib.metadata
    import platform

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    for package in ("transformer-lens", "transformers", "datasets", "numpy", "pandas"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            bf16=torch.cuda.is_bf16_supported(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,utilization.gpu"
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def worker_lm_speed(dry: bool, presets: list[str]) -> dict[str, Any]:
    """ms/step, peak GPU memory, one evaluation and one checkpoint, and the projected full run, per preset and precision."""
    import torch

    from grokking.store import RunDir
    from grokking.train import Trainer, is_checkpoint_step

    device = _device(dry)
    steps, warmup = (3, 1) if dry else (100, 10)
    rows = []
    for preset in presets:
        eval_s = ckpt_s = None
        for precision, cfg, task in _by_precision(preset, dry):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(cfg, RunDir(tmp), device, task)
                trainer.model.train()
                ms = _ms_per_step(trainer, device, steps, warmup)
                syncs = _syncs_per_step(trainer, device)
                if eval_s is None:  # evaluation runs in fp32 whatever the precision: timed once per preset
                    start = time.perf_counter()
                    trainer.record(None)
                    eval_s = time.perf_counter() - start
                    start = time.perf_counter()
                    trainer.checkpoint()
                    ckpt_s = time.perf_counter() - start
            tr = cfg.train
            n_evals = tr.steps // tr.eval_every + 1
            n_ckpts = sum(is_checkpoint_step(s, tr) for s in range(tr.steps + 1))
            hours = (tr.steps * ms / 1000 + n_evals * eval_s + n_ckpts * ckpt_s) / 3600
            rows.append(
                {
                    "preset": preset,
                    "precision": precision,
                    "ms_per_step": round(ms, 2),
                    "syncs_per_step": syncs,
                    "peak_gib": _peak_gib(device),
                    "eval_s": round(eval_s, 3),
                    "checkpoint_s": round(ckpt_s, 3),
                    "full_steps": tr.steps,
                    "evaluations": n_evals,
                    "checkpoints": n_ckpts,
                    "projected_full_run_h": round(hours, 3),
                    "training_only_h": round(tr.steps * ms / 3.6e6, 3),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "timed_steps": steps}


def worker_batched(dry: bool) -> dict[str, Any]:
    """8 batched `nanda-p113` seeds against one seed: whole 2k-step runs (evaluation and checkpoints included) and ms/step."""
    import torch

    from grokking.batched import open_batch, train_batched
    from grokking.store import RunDir
    from grokking.train import Trainer, train

    device = _device(dry)
    n, steps = (2, 20) if dry else (8, 2000)
    cfg = _config("nanda-p113", "fp32", dry, TOY_MODULAR, steps)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = _config("nanda-p113", "fp32", dry, TOY_MODULAR, 10)  # kernels, handles and vmap set up outside the timings
        train(warm, root / "warm-solo", progress=False)
        train_batched(warm, list(range(n)), [root / "warm-batched" / f"seed{s}" for s in range(n)], progress=False)
        solo = train(cfg, root / "solo", progress=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        members = train_batched(cfg, list(range(n)), [root / "batched" / f"seed{s}" for s in range(n)], progress=False)
        batched_peak = _peak_gib(device)
        solo_ms = _ms_per_step(Trainer(cfg, RunDir(root / "solo-steps"), device), device, 5 if dry else 50, 2 if dry else 10)
        batch = open_batch(cfg, list(range(n)), [root / "batched-steps" / f"seed{s}" for s in range(n)])[1]
        batched_ms = _ms_per_step(batch, device, 5 if dry else 50, 2 if dry else 10)
    test_acc = [float(m.last_row["test_acc"]) for m in members if m.last_row]
    return {
        "seeds": n,
        "steps": steps,
        "solo_run_s": round(solo.elapsed, 2),
        "batched_run_s": round(members[0].elapsed, 2),
        "run_cost_ratio": round(members[0].elapsed / solo.elapsed, 2),
        "solo_ms_per_step": round(solo_ms, 2),
        "batched_ms_per_step": round(batched_ms, 2),
        "step_cost_ratio": round(batched_ms / solo_ms, 2),
        "batched_peak_gib": batched_peak,
        "test_acc_per_seed": test_acc,
    }


def worker_profile(dry: bool, out: Path) -> dict[str, Any]:
    """Where a step's time goes: kernels per step and GPU kernel time against wall time (launch-bound or not)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from grokking.store import RunDir
    from grokking.train import Trainer

    device = _device(dry)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    steps = 3 if dry else 10
    rows, tables = [], []
    for preset, precision, cfg, task in ((p, *rest) for p in ("nanda-p113", "qf-paper") for rest in _by_precision(p, dry)):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, RunDir(tmp), device, task)
            trainer.model.train()
            wall_ms = _ms_per_step(trainer, device, 3 if dry else 30, 1 if dry else 5)
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    trainer.update(trainer.step_loss()[0])
                _sync(device)
        averages = prof.key_averages()
        kernels = [e for e in averages if e.device_type == DeviceType.CUDA]
        kernel_ms = sum(e.self_device_time_total for e in kernels) / 1000 / steps
        on_gpu = bool(kernels)  # None below: no kernel events (a CPU, or a profiler that saw none)
        rows.append(
            {
                "preset": preset,
                "precision": precision,
                "wall_ms_per_step": round(wall_ms, 2),
                "kernel_ms_per_step": round(kernel_ms, 3) if on_gpu else None,
                "gpu_busy": round(kernel_ms / wall_ms, 3) if on_gpu else None,
                "kernels_per_step": round(sum(e.count for e in kernels) / steps, 1) if on_gpu else None,
            }
        )
        sort_key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
        tables.append(f"## {preset} {precision}: {steps} steps, sorted by {sort_key}\n\n{averages.table(sort_by=sort_key, row_limit=15)}")
        print(json.dumps(rows[-1]), flush=True)
    (out / "profile.txt").write_text("\n\n".join(tables))
    return {"rows": rows, "profiled_steps": steps}


WORKERS: dict[str, Callable[..., dict[str, Any]]] = {
    "environment": worker_environment,
    "lm_speed": worker_lm_speed,
    "icl_speed": worker_lm_speed,
    "batched": worker_batched,
    "profile": worker_profile,
}


# ---- the driver ----------------------------------------------------------------------------------------------


class Check:
    """Runs the steps in child processes within one time budget and keeps OUT's JSON and markdown current."""

    def __init__(self, out: Path, dry: bool, python: str, budget_s: float):
        self.out, self.dry, self.python = out, dry, python
        self.slack = DRY_SLACK if dry else 1
        budget_s *= self.slack
        self.start = time.monotonic()
        self.deadline = self.start + budget_s
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self.log = out / "gpu_check.log"
        self.results: dict[str, Any] = {
            "mode": "dry-run (CPU, toy sizes)" if dry else "gpu",
            "budget_s": budget_s,
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "steps": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, argv: list[str], cap_s: float, reserve_s: float = 0.0, floor_s: float = 10.0) -> dict[str, Any]:
        """Run one child under min(cap, time left - reserve for later steps); SIGTERM at the limit, SIGKILL 20 s later."""
        limit = min(cap_s, self.left() - reserve_s) if self.slack == 1 else min(cap_s, self.left() / self.slack - reserve_s) * self.slack
        if limit < floor_s:
            return self.record(name, {"status": "skipped", "note": f"only {max(0.0, limit):.0f} s left of the budget"})
        print(f"[gpu_check] {name}: up to {limit:.0f} s: {' '.join(argv)}", flush=True)
        step_log = self.work / f"{name}.log"
        start, cpu_before = time.monotonic(), _children_cpu_s()
        with open(step_log, "w") as fh:
            proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
            timed_out = False
            try:
                rc = proc.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
        seconds, cpu_s = time.monotonic() - start, _children_cpu_s() - cpu_before
        text = step_log.read_text(errors="replace")
        with open(self.log, "a") as fh:
            fh.write(f"\n===== {name} (rc {rc}, {seconds:.1f} s) {' '.join(argv)}\n{text}")
        status = "timeout" if timed_out else ("ok" if rc == 0 else "failed")
        entry: dict[str, Any] = {"status": status, "seconds": round(seconds, 1), "cpu_s": round(cpu_s, 1), "rc": rc}
        result = _last_json(text)
        if result is not None:
            entry.update(result)
        if status == "failed":
            entry["error"] = _error_line(text)
        entry["output"] = text
        return entry

    def record(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        entry.pop("output", None)
        self.results["steps"][name] = entry
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2))
        (self.out / "gpu_check.md").write_text(markdown(self.results))
        print(
            f"[gpu_check] {name}: {entry['status']}"
            + (f" ({entry['seconds']} s)" if "seconds" in entry else "")
            + (f": {entry.get('note') or entry.get('error')}" if entry.get("note") or entry.get("error") else ""),
            flush=True,
        )
        return entry

    def worker(self, name: str, cap_s: float, reserve_s: float, *extra: str) -> dict[str, Any]:
        argv = [self.python, str(Path(__file__).resolve()), "--worker", name, "--out", str(self.out), *(["--dry-run"] if self.dry else []), *extra]
        return self.record(name, self.run(name, argv, cap_s, reserve_s))

    def cli(self, *args: str) -> list[str]:
        return [self.python, "-m", "grokking.cli", *args]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("{")]
    return lines[-1][-300:] if lines else "no output"


def pytest_counts(text: str) -> dict[str, int]:
    """pytest's closing line ('3 passed, 1 skipped, 1 xfailed in 4.2s') as counts."""
    summary = [line for line in text.splitlines() if re.search(r"\b(passed|failed|skipped|error|errors|deselected|no tests ran)\b", line)]
    if not summary:
        return {}
    return {kind: int(count) for count, kind in re.findall(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)", summary[-1])}


def run_check(out: Path, dry: bool, python: str, budget_s: float) -> dict[str, Any]:
    from grokking.config import PRESETS

    check = Check(out, dry, python, budget_s)
    device = "cpu" if dry else "cuda"
    # Each step's reserve keeps time for the steps after it, most of it for the whole nanda-p113 run.
    env = check.worker("environment", 60, 330)
    if not dry and not env.get("cuda_available"):
        check.record("abort", {"status": "failed", "note": "PyTorch sees no CUDA GPU here: run with --dry-run on a CPU"})
        shutil.rmtree(check.work, ignore_errors=True)
        return check.results

    tests = check.run(
        "cuda_tests", [python, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rsxX", "-p", "no:cacheprovider"], cap_s=110, reserve_s=300
    )
    tests.update(counts=pytest_counts(tests["output"]))
    tests["failures"] = [line for line in tests["output"].splitlines() if line.startswith(("FAILED", "ERROR", "XPASS"))]
    check.record("cuda_tests", tests)

    check.worker("lm_speed", 90, 260, "qf-paper", "qf-cpu")
    check.worker("batched", 70, 230)
    check.worker("profile", 60, 210)

    run_dir = check.work / "nanda-p113"
    toy = [arg for key, value in TOY_MODULAR.items() for arg in ("--set", f"{key}={value}")] + ["--steps", "40"] if dry else []
    nanda = check.run(
        "nanda_p113",
        check.cli("train", "nanda-p113", "--device", device, "--out", str(run_dir), "--fresh", *toy),
        cap_s=300,
        reserve_s=60,
        floor_s=30,
    )
    nanda.update(summarise_run(run_dir, nanda, 40 if dry else NANDA_STEPS))
    check.record("nanda_p113", nanda)
    from grokking.store import RunDir

    run = RunDir(run_dir)
    if run.metrics_path.is_file():
        shutil.copy(run.metrics_path, out / "nanda-p113-metrics.csv")
        analysis = check.run("nanda_p113_analyze", check.cli("analyze", str(run_dir)), cap_s=60, reserve_s=15 if "icl-paper" in PRESETS else 0)
        if run.analysis_summary_path.is_file():
            summary = json.loads(run.analysis_summary_path.read_text())
            analysis.update({k: summary.get(k) for k in ("key_frequencies", "phases")})
            shutil.copy(run.analysis_summary_path, out / "nanda-p113-analysis.json")
        check.record("nanda_p113_analyze", analysis)

    if "icl-paper" in PRESETS:
        check.worker("icl_speed", 60, 0, "icl-paper")
    else:
        check.record("icl_speed", {"status": "skipped", "note": "no icl-paper preset in this checkout yet"})
    shutil.rmtree(check.work, ignore_errors=True)
    return check.results


def summarise_run(run_dir: Path, entry: dict[str, Any], planned_steps: int) -> dict[str, Any]:
    """Training seconds, final test accuracy and the steps where it passed 50% and 99%, from the CLI's output and
    metrics.csv; a run stopped at its time limit gets the full run's time projected from its own pace."""
    result: dict[str, Any] = {}
    done = re.search(r"done: step (\d+), train acc ([\d.]+)%, test acc ([\d.]+)%, test loss (\S+) \((\d+) s\)", entry["output"])
    if done:
        result.update(training_s=int(done.group(5)), test_loss=float(done.group(4)))
    from grokking.store import RunDir

    metrics = RunDir(run_dir).metrics_path
    if metrics.is_file():
        import pandas as pd

        table = pd.read_csv(metrics)
        last = table.iloc[-1]
        result.update(last_step=int(last.step), test_acc=round(float(last.test_acc), 4), train_acc=round(float(last.train_acc), 4))
        for level in (0.5, 0.99):
            reached = table[table.test_acc >= level]
            result[f"first_step_test_acc_{int(level * 100)}"] = int(reached.step.iloc[0]) if len(reached) else None
        if not done and int(last.step) > 0:
            result["projected_full_run_s"] = round(entry["seconds"] * planned_steps / int(last.step))
    return result


# ---- the markdown table --------------------------------------------------------------------------------------


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    steps = results["steps"]
    env = steps.get("environment", {})
    lines = [
        f"# GPU check: {results['mode']}, started {results['started_utc']}, {results.get('elapsed_s')} s of {results['budget_s']} s",
        "",
        f"Device: {env.get('device', 'none')} ({env.get('nvidia_smi', 'no nvidia-smi')}); CPU {env.get('cpu')} x{env.get('cpu_count')}; "
        f"torch {env.get('torch')} (CUDA {env.get('cuda_build')}), transformer-lens {env.get('transformer-lens')}, "
        f"Python {env.get('python')}",
        "",
        "| step | status | seconds | result |",
        "|---|---|---|---|",
    ]
    for name, entry in steps.items():
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', '')} | {_headline(name, entry)} |")
    if "lm_speed" in steps and steps["lm_speed"].get("rows"):
        lines += [
            "",
            f"## ms/step ({steps['lm_speed'].get('timed_steps')} timed steps) and projected full runs",
            "",
            _table(
                steps["lm_speed"]["rows"],
                [
                    "preset",
                    "precision",
                    "ms_per_step",
                    "syncs_per_step",
                    "peak_gib",
                    "eval_s",
                    "checkpoint_s",
                    "full_steps",
                    "projected_full_run_h",
                    "training_only_h",
                ],
            ),
        ]
    if "icl_speed" in steps and steps["icl_speed"].get("rows"):
        lines += [
            "",
            "## icl-paper",
            "",
            _table(steps["icl_speed"]["rows"], ["preset", "precision", "ms_per_step", "peak_gib", "eval_s", "projected_full_run_h"]),
        ]
    if "profile" in steps and steps["profile"].get("rows"):
        lines += [
            "",
            "## Where a step's time goes (kernel time from the profiler, wall time unprofiled)",
            "",
            _table(steps["profile"]["rows"], ["preset", "precision", "wall_ms_per_step", "kernel_ms_per_step", "gpu_busy", "kernels_per_step"]),
        ]
    failures = steps.get("cuda_tests", {}).get("failures")
    if failures:
        lines += ["", "## CUDA test failures", "", *[f"- `{line}`" for line in failures]]
    return "\n".join(lines) + "\n"


def _headline(name: str, e: dict[str, Any]) -> str:
    if e.get("note") or e.get("error"):
        return str(e.get("note") or e.get("error"))
    if name == "cuda_tests":
        return ", ".join(f"{v} {k}" for k, v in e.get("counts", {}).items())
    if name == "batched":
        return (
            f"{e.get('seeds')} seeds x {e.get('steps')} steps: {e.get('batched_run_s')} s vs one seed {e.get('solo_run_s')} s "
            f"= {e.get('run_cost_ratio')}x; per step {e.get('batched_ms_per_step')} vs {e.get('solo_ms_per_step')} ms = {e.get('step_cost_ratio')}x"
        )
    if name == "nanda_p113":
        projected = f" (stopped; full run projected at {e['projected_full_run_s']} s)" if e.get("projected_full_run_s") else ""
        return (
            f"step {e.get('last_step')}: test acc {e.get('test_acc')}, training {e.get('training_s')} s{projected}; test acc >= 50% / 99% "
            f"from step {e.get('first_step_test_acc_50')} / {e.get('first_step_test_acc_99')}"
        )
    if name == "nanda_p113_analyze":
        return f"key frequencies {e.get('key_frequencies')}; phases {e.get('phases')}"
    if name in ("lm_speed", "icl_speed", "profile"):
        return "table below"
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md and the logs")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for the whole check")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("presets", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.worker:
        worker = WORKERS[args.worker]
        kwargs: dict[str, Any] = {"dry": args.dry_run}
        if args.worker in ("lm_speed", "icl_speed"):
            kwargs["presets"] = args.presets
        if args.worker == "profile":
            kwargs["out"] = args.out
        print(json.dumps(worker(**kwargs)), flush=True)
        return
    results = run_check(args.out, args.dry_run, sys.executable, args.budget)
    print((args.out / "gpu_check.md").read_text(), flush=True)
    bad = [name for name, entry in results["steps"].items() if entry["status"] in ("failed", "timeout")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
