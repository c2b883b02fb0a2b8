"""Map the progress measures over every checkpoint of a run: `grokking analyze RUN_DIR`.

Writes, next to the run's own files:
    analysis.csv            one row per checkpoint (`step` first): losses, accuracies, Fourier measures, norms
    fourier_norms.csv       long table (step, matrix, k, norm) of the W_E and W_L frequency norms
    analysis.json           key frequencies (from the final checkpoint), phase boundaries, skipped files
    analysis_maps.safetensors  attention / neuron maps over (a, b) at a few steps, for the report

Key frequencies come from the final checkpoint, as in the paper. A re-run computes only checkpoints
missing from analysis.csv, unless the final checkpoint (and with it the key frequencies) changed,
in which case the Fourier columns are recomputed for every step. Rows are saved as they are
computed, so an interrupted analysis keeps its work.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save
from tqdm.auto import tqdm

from grokking.analysis import fourier
from grokking.analysis.norms import total_sq_weight_norm
from grokking.analysis.phases import detect_phases
from grokking.errors import UserError
from grokking.fast_forward import last_position_logits
from grokking.objectives import answer_loss_and_acc
from grokking.run import Run, load_run
from grokking.store import atomic_write

SAVE_EVERY_SECONDS = 10.0
N_MAP_STEPS = 6


def analysis_paths(run_dir: Path) -> dict[str, Path]:
    return {name: run_dir / name for name in ("analysis.csv", "fourier_norms.csv", "analysis.json", "analysis_maps.safetensors")}


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write(path, buf.getvalue().encode())


def _losses(logits: torch.Tensor, labels: torch.Tensor, train_idx: torch.Tensor, test_idx: torch.Tensor) -> dict[str, float]:
    train_loss, train_acc = answer_loss_and_acc(logits[train_idx], labels[train_idx])
    test_loss, test_acc = answer_loss_and_acc(logits[test_idx], labels[test_idx])
    return {"train_loss": train_loss.item(), "test_loss": test_loss.item(), "train_acc": train_acc.item(), "test_acc": test_acc.item()}


def _checkpoint_row(run: Run, step: int, key_freqs: list[int]) -> tuple[dict[str, float], list[dict]]:
    """One analysis row and the frequency-norm rows of one checkpoint."""
    model = run.model(step)
    task = run.task
    with torch.no_grad():
        logits = last_position_logits(model, task.tokens)
        row: dict[str, float] = {"step": step, **_losses(logits, task.labels, task.train_idx, task.test_idx)}
        row.update(fourier.checkpoint_measures(model, task, key_freqs, logits=logits))
        row["total_sq_weight_norm"] = total_sq_weight_norm(model)
        norm_rows = []
        for matrix, norms in (("W_E", fourier.embedding_frequency_norms(model, task.p)),
                              ("W_L", fourier.logit_map_frequency_norms(model, task.p))):
            norm_rows += [{"step": step, "matrix": matrix, "k": k, "norm": float(v)} for k, v in enumerate(norms.tolist())]
    return row, norm_rows


@torch.no_grad()
def _maps(run: Run, steps: list[int], neurons: list[int]) -> dict[str, torch.Tensor]:
    """Attention from `=` to `a`, per head, and chosen neurons' activations, as [step, head|neuron, a, b] grids."""
    p = run.task.p
    attn, acts = [], []
    for step in steps:
        model = run.model(step)
        _, cache = model.run_with_cache(run.task.tokens, names_filter=lambda n: n in ("blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post"))
        attn.append(cache["blocks.0.attn.hook_pattern"][:, :, -1, 0].T.reshape(-1, p, p))
        acts.append(cache["blocks.0.mlp.hook_post"][:, -1, neurons].T.reshape(-1, p, p))
    return {"steps": torch.tensor(steps), "neurons": torch.tensor(neurons),
            "attention_to_a": torch.stack(attn).half(), "neuron_acts": torch.stack(acts).half()}


def _map_steps(steps: list[int]) -> list[int]:
    idx = torch.linspace(0, len(steps) - 1, min(N_MAP_STEPS, len(steps))).round().long().unique()
    return [steps[i] for i in idx.tolist()]


def analyze(run_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Compute every progress measure for every checkpoint; returns the analysis table."""
    run = load_run(run_dir)
    paths = analysis_paths(run.path)
    steps = run.steps
    if not steps:
        raise UserError(f"{run.path} has no checkpoints to analyse; train it first (`grokking train ... --out {run.path}`)")
    if run.config.task.task != "modular":
        raise UserError(f"{run.path} is a '{run.config.task.task}' run; the Fourier analysis needs a modular-arithmetic task")
    skipped: dict[int, str] = {}
    final_step = next((s for s in reversed(steps) if _loads(run, s, skipped)), None)
    if final_step is None:
        raise UserError(f"every checkpoint in {run.path} is unreadable; re-train the run")
    final_model = run.model(final_step)
    key_freqs = fourier.key_frequencies(final_model, run.task)

    previous = json.loads(paths["analysis.json"].read_text()) if paths["analysis.json"].is_file() else {}
    reuse = previous.get("final_step") == final_step and previous.get("key_frequencies") == key_freqs
    table = pd.read_csv(paths["analysis.csv"]) if reuse and paths["analysis.csv"].is_file() else pd.DataFrame()
    norms = pd.read_csv(paths["fourier_norms.csv"]) if reuse and paths["fourier_norms.csv"].is_file() else pd.DataFrame()
    done = set(table.step.astype(int)) & set(norms.step.astype(int)) if len(table) and len(norms) else set()
    todo = [s for s in steps if s not in done and s not in skipped]

    rows, norm_rows = table.to_dict("records"), norms.to_dict("records")
    last_save = time.perf_counter()

    def save_tables() -> pd.DataFrame:
        out = pd.DataFrame(rows).sort_values("step").reset_index(drop=True)
        _write_csv(paths["analysis.csv"], out)
        _write_csv(paths["fourier_norms.csv"], pd.DataFrame(norm_rows).sort_values(["step", "matrix", "k"]))
        return out

    try:
        for step in tqdm(todo, desc="analyse", unit="ckpt", disable=not progress, dynamic_ncols=True):
            try:
                row, nrows = _checkpoint_row(run, step, key_freqs)
            except UserError as exc:
                skipped[step] = str(exc)
                tqdm.write(f"skipped step {step}: {exc}")
                continue
            rows.append(row)
            norm_rows += nrows
            if time.perf_counter() - last_save > SAVE_EVERY_SECONDS:
                save_tables()
                last_save = time.perf_counter()
    finally:
        if rows:
            table = save_tables()

    phases = detect_phases(table, run.task.p)
    clusters = fourier.neuron_clusters(fourier.neuron_frequency_fractions(fourier.neuron_activations(final_model, run.task)))
    neurons = _representative_neurons(clusters, key_freqs)
    good_steps = [s for s in steps if s not in skipped]
    maps = _maps(run, sorted(set(_map_steps(good_steps)) | {final_step}), neurons)
    atomic_write(paths["analysis_maps.safetensors"], save({k: v.contiguous() for k, v in maps.items()}))
    summary = {
        "final_step": final_step,
        "key_frequencies": key_freqs,
        "key_frequencies_from_embedding": fourier.key_frequencies_from_embedding(fourier.embedding_frequency_norms(final_model, run.task.p)),
        "phases": phases.to_dict(),
        "neuron_cluster_sizes": {str(k): int((clusters == k).sum()) for k in sorted(set(clusters.tolist()))},
        "skipped": {str(k): v for k, v in skipped.items()},
    }
    atomic_write(paths["analysis.json"], json.dumps(summary, indent=2).encode())
    return table


def _loads(run: Run, step: int, skipped: dict[int, str]) -> bool:
    try:
        run.weights(step)
        return True
    except UserError as exc:
        skipped[step] = str(exc)
        return False


def _representative_neurons(clusters: torch.Tensor, key_freqs: list[int], limit: int = 4) -> list[int]:
    """The first neuron of each key-frequency cluster (neuron 0 if there is none), for the heat-maps."""
    chosen = [int(torch.nonzero(clusters == k)[0]) for k in key_freqs if (clusters == k).any()]
    return chosen[:limit] or [0]
