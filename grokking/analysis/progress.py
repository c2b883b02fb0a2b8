"""Map the progress measures over every checkpoint of a run: `grokking analyze RUN_DIR`.

One loop serves every task family; a *plan* (each family's `analysis`, grokking/families.py) says what
one checkpoint's row holds and what the run-level summary is:
- modular runs (`ModularPlan`): losses and accuracies over all p^2 pairs (on the p answer classes, like
  the Fourier measures), the Fourier measures with key frequencies from the final checkpoint (as in the
  paper, widened until they explain its logits) for add and subtract, a not-applicable note instead
  for other operations, norms, phases, and (a,b) heat-maps;
- language runs (`StructuralPlan`, in `structural_progress.py`): the run's metrics, weight norms,
  attention entropy/sparsity, tscore and tparseval on a fixed random sample of training sentences;
- icl-functions runs (`ICLPlan`, in `icl.py`): each evaluation set's error, the family probe, final curves.

Files written next to the run's own:
    analysis.csv   one row per checkpoint, `step` first
    analysis.json  the summary (key frequencies or sample, phases or early stopping, skipped files)
    plus the plan's extras (fourier_norms.csv, analysis_maps.safetensors, analysis_trees.json)

A re-run computes only checkpoints missing from analysis.csv, unless the plan's signature changed
(a new final checkpoint with other key frequencies, another sample size), in which case every row is
recomputed. Rows are saved as they are computed, so an interrupted analysis keeps its work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from safetensors.torch import save
from tqdm.auto import tqdm

from grokking.analysis import fourier
from grokking.analysis.llc import LLCRequest, analyze_llc, merge_llc
from grokking.analysis.norms import total_sq_weight_norm
from grokking.analysis.phases import detect_phases
from grokking.analysis.steps import spread_steps
from grokking.errors import UserError
from grokking.families import family_of
from grokking.fast_forward import last_position_logits
from grokking.objectives import answer_loss_and_acc
from grokking.run import Run, load_run
from grokking.store import atomic_write, write_csv

SAVE_EVERY_SECONDS = 10.0
N_MAP_STEPS = 6


class Plan(Protocol):
    signature: dict

    def row(self, step: int) -> tuple[dict[str, float], list[dict]]:
        """The analysis row of one checkpoint, and rows of the plan's long extra table (may be empty)."""

    def finish(self, table: pd.DataFrame, good_steps: list[int]) -> dict:
        """Write the plan's extra files and return its part of analysis.json."""


class ModularPlan:
    """Fourier progress measures of a modular-arithmetic run (add or subtract; other operations get losses only)."""

    def __init__(self, run: Run, final_step: int, sample: int, sample_seed: int):
        """The registry's plan signature (grokking/families.py): key frequencies come from `final_step`'s model;
        every (a, b) pair is measured, so `sample` and `sample_seed` are not used."""
        self.run, self.task, self.final_step = run, run.task, final_step
        self.final_model = run.model(final_step)
        self.applicable = fourier.fourier_applicable(self.task.operation)
        self.selection = fourier.select_key_frequencies(self.final_model, self.task) if self.applicable else None
        self.key_freqs = self.selection.freqs if self.selection else []
        self.signature = {"kind": "modular", "final_step": final_step, "key_frequencies": self.key_freqs if self.applicable else None}

    @torch.no_grad()
    def row(self, step: int) -> tuple[dict[str, float], list[dict]]:
        model, task = self.run.model(step), self.task
        logits = last_position_logits(model, task.tokens)
        answers = logits[:, : task.p]  # the p answer classes, as the Fourier measures (p + 1 outputs: imported runs)
        train_loss, train_acc = answer_loss_and_acc(answers[task.train_idx], task.labels[task.train_idx])
        test_loss, test_acc = answer_loss_and_acc(answers[task.test_idx], task.labels[task.test_idx])
        row = {
            "step": step,
            "train_loss": train_loss.item(),
            "test_loss": test_loss.item(),
            "train_acc": train_acc.item(),
            "test_acc": test_acc.item(),
        }
        norm_rows = []
        if self.applicable:
            row.update(fourier.checkpoint_measures(model, task, self.key_freqs, logits=logits))
            for matrix, norms in (
                ("W_E", fourier.embedding_frequency_norms(model, task.p)),
                ("W_L", fourier.logit_map_frequency_norms(model, task.p)),
            ):
                norm_rows += [{"step": step, "matrix": matrix, "k": k, "norm": float(v)} for k, v in enumerate(norms.tolist())]
        row["total_sq_weight_norm"] = total_sq_weight_norm(model)
        return row, norm_rows

    def finish(self, table: pd.DataFrame, good_steps: list[int]) -> dict:
        phases = detect_phases(table, self.task.p).to_dict()
        if not self.applicable:
            maps = self._maps(sorted(set(spread_steps(good_steps, N_MAP_STEPS)) | {self.final_step}), [0])
            atomic_write(self.run.dir.analysis_maps_path, save({k: v.contiguous() for k, v in maps.items()}))
            return {"fourier_applicable": False, "fourier_note": fourier.NOT_APPLICABLE_NOTE.format(operation=self.task.operation), "phases": phases}
        clusters = fourier.neuron_clusters(fourier.neuron_frequency_fractions(fourier.neuron_activations(self.final_model, self.task)))
        neurons = [int(torch.nonzero(clusters == k)[0]) for k in self.key_freqs if (clusters == k).any()][:4] or [0]
        maps = self._maps(sorted(set(spread_steps(good_steps, N_MAP_STEPS)) | {self.final_step}), neurons)
        atomic_write(self.run.dir.analysis_maps_path, save({k: v.contiguous() for k, v in maps.items()}))
        return {
            "fourier_applicable": True,
            **self.selection.to_dict(),
            "key_frequencies_from_embedding": fourier.key_frequencies_from_embedding(
                fourier.embedding_frequency_norms(self.final_model, self.task.p)
            ),
            "phases": phases,
            "neuron_cluster_sizes": {str(k): int((clusters == k).sum()) for k in sorted(set(clusters.tolist()))},
        }

    @torch.no_grad()
    def _maps(self, steps: list[int], neurons: list[int]) -> dict[str, torch.Tensor]:
        """Attention from `=` to `a` per head, and chosen neurons' activations, as [step, head|neuron, a, b] grids."""
        p = self.task.p
        attn, acts = [], []
        for step in steps:
            _, cache = self.run.model(step).run_with_cache(
                self.task.tokens, names_filter=lambda n: n in ("blocks.0.attn.hook_pattern", "blocks.0.mlp.hook_post")
            )
            attn.append(cache["blocks.0.attn.hook_pattern"][:, :, -1, 0].T.reshape(-1, p, p))
            acts.append(cache["blocks.0.mlp.hook_post"][:, -1, neurons].T.reshape(-1, p, p))
        return {
            "steps": torch.tensor(steps),
            "neurons": torch.tensor(neurons),
            "attention_to_a": torch.stack(attn).half(),
            "neuron_acts": torch.stack(acts).half(),
        }


def _readable(run: Run, step: int, skipped: dict[int, str]) -> bool:
    try:
        run.weights(step)
        return True
    except UserError as exc:
        skipped[step] = str(exc)
        return False


def analyze(run_dir: str | Path, sample: int = 2000, progress: bool = True, sample_seed: int = 0, llc: LLCRequest | None = None) -> pd.DataFrame:
    """Compute the progress measures of every checkpoint; returns the analysis table.

    `sample` is the number of training examples the structural measures use, drawn at random with
    `sample_seed` (language runs only). `llc` adds the LLC (`llc_mean`, `llc_std`) of the checkpoints it selects.
    """
    run = load_run(run_dir)
    if llc is not None:
        llc.validate()
    steps = run.steps
    if not steps:
        raise UserError(f"{run.path} has no checkpoints to analyse; train it first (`grokking train ... --out {run.path}`)")
    skipped: dict[int, str] = {}
    final_step = next((s for s in reversed(steps) if _readable(run, s, skipped)), None)
    if final_step is None:
        raise UserError(f"every checkpoint in {run.path} is unreadable; re-train the run")
    plan: Plan = family_of(run.config.task.task).resolve("analysis")(run, final_step, sample, sample_seed)

    csv_path, json_path, extra_path = run.dir.analysis_path, run.dir.analysis_summary_path, run.dir.fourier_norms_path
    previous = run.dir.read_json(json_path) if json_path.is_file() else {}
    reuse = previous.get("signature") == plan.signature and csv_path.is_file()
    rows = pd.read_csv(csv_path).to_dict("records") if reuse else []
    extra_rows = pd.read_csv(extra_path).to_dict("records") if reuse and extra_path.is_file() else []
    done = {int(r["step"]) for r in rows}
    todo = [s for s in steps if s not in done and s not in skipped]

    def save_tables() -> pd.DataFrame:
        table = pd.DataFrame(rows).sort_values("step").reset_index(drop=True)
        write_csv(csv_path, table)
        if extra_rows:
            write_csv(extra_path, pd.DataFrame(extra_rows).sort_values(["step", "matrix", "k"]))
        return table

    last_save = time.perf_counter()
    try:
        for step in tqdm(todo, desc="analyse", unit="ckpt", disable=not progress, dynamic_ncols=True):
            try:
                row, extra = plan.row(step)
            except UserError as exc:
                skipped[step] = str(exc)
                tqdm.write(f"skipped step {step}: {exc}")
                continue
            rows.append(row)
            extra_rows.extend(extra)
            if time.perf_counter() - last_save > SAVE_EVERY_SECONDS:
                save_tables()
                last_save = time.perf_counter()
    finally:
        if rows:
            table = save_tables()
    good_steps = [s for s in steps if s not in skipped]
    summary = {"signature": plan.signature, **plan.signature, **plan.finish(table, good_steps), "skipped": {str(k): v for k, v in skipped.items()}}
    atomic_write(json_path, json.dumps(summary, indent=2).encode())
    if llc is not None:
        table = merge_llc(table, analyze_llc(run, good_steps, llc, progress=progress))
        write_csv(csv_path, table)
    return table
