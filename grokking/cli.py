"""The `grokking` command. Heavy imports (torch, transformer_lens) happen inside the commands that
need them, so `grokking --help` and `grokking presets` answer at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from grokking.errors import UserError
from grokking.families import family_of, tasks_where

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="A lab for grokking and emergence in small transformers.",
)


@app.command()
def presets(keys: Annotated[bool, typer.Option("--keys", help="Also list every key that --set accepts.")] = False) -> None:
    """List the named presets, one line each."""
    from grokking.config import PRESETS, flat_keys

    width = max(map(len, PRESETS))
    for name, (description, _) in PRESETS.items():
        typer.echo(f"{name:<{width}}  {description}")
    if keys:
        typer.echo("\n--set keys: " + ", ".join(flat_keys()))


@app.command()
def train(
    preset: Annotated[str, typer.Argument(help="Preset name (see `grokking presets`).")],
    out: Annotated[Optional[Path], typer.Option(help="Run directory [default: checkpoints/PRESET-seedN].")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Init seed (the data split has its own, data_seed).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Number of optimiser steps.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: --set key=value (repeatable).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over even if the run directory holds a run.")] = False,
    batch_seeds: Annotated[
        Optional[int],
        typer.Option(
            "--batch-seeds",
            help="Train N seeds (--seed, --seed+1, ...) as one batched model, each into its own run directory (--out DIR means DIR/seed{s}).",
        ),
    ] = None,
) -> None:
    """Train a preset into a run directory; re-running on the same directory resumes it."""
    from grokking.config import assemble_config

    sets = {}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects key=value, got '{item}'")
        sets[key.strip()] = value.strip()
    cfg = assemble_config(preset, sets, seed=seed, steps=steps, device=device)
    if batch_seeds is not None and batch_seeds < 1:
        raise UserError(f"--batch-seeds must be at least 1, got {batch_seeds}")
    if batch_seeds is not None and not family_of(cfg.task.task).batch_seeds:
        raise UserError(f"--batch-seeds does not support {cfg.task.task} runs yet; train each seed with --seed")

    from grokking.train import TrainingInterrupted
    from grokking.train import train as run_training

    try:
        if batch_seeds is None:
            trainers = [run_training(cfg, out or Path("checkpoints") / f"{preset}-seed{cfg.train.seed}", fresh=fresh)]
        else:
            from grokking.batched import default_outs, train_batched

            seeds = list(range(cfg.train.seed, cfg.train.seed + batch_seeds))
            trainers = train_batched(cfg, seeds, default_outs(preset, seeds, out), fresh=fresh)
    except TrainingInterrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(130) from None
    for trainer in trainers:
        rows = trainer.run.read_metric_rows()
        if rows:
            last = rows[-1]
            if "train_acc" not in last:  # regression (icl-functions): no accuracy
                typer.echo(
                    f"done: step {last['step']}, train MSE {float(last['train_loss']):.3e}, normalised test error "
                    f"{float(last['test_loss']):.4f} ({trainer.elapsed:.0f} s) -> {trainer.run.path}"
                )
                continue
            typer.echo(
                f"done: step {last['step']}, train acc {float(last['train_acc']):.1%}, test acc {float(last['test_acc']):.1%}, "
                f"test loss {float(last['test_loss']):.2e} ({trainer.elapsed:.0f} s) -> {trainer.run.path}"
            )


LLCLr = Annotated[float, typer.Option("--llc-lr", help="LLC: SGLD step size ε.")]
LLCLocalization = Annotated[float, typer.Option("--llc-localization", help="LLC: localization γ, the pull back to the checkpoint.")]
LLCNbeta = Annotated[Optional[float], typer.Option(help="LLC: inverse temperature nβ [default: batch size / ln(batch size), devinterp's].")]
LLCChains = Annotated[int, typer.Option(help="LLC: SGLD chains (the std is over chains).")]
LLCDraws = Annotated[int, typer.Option(help="LLC: SGLD draws (steps) per chain.")]
LLCBatch = Annotated[int, typer.Option(help="LLC: training examples per SGLD step.")]
LLCSeed = Annotated[int, typer.Option(help="LLC: seed of the SGLD noise and batches (chain c uses seed + c).")]


@app.command()
def analyze(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `grokking train`.")],
    sample: Annotated[int, typer.Option(help="Random training examples for the structural measures (language runs).")] = 2000,
    sample_seed: Annotated[int, typer.Option(help="Seed of that random sample (language runs).")] = 0,
    measures: Annotated[
        Optional[str],
        typer.Option(
            help="Extra measures on top of the standard ones, comma-separated: llc "
            "(the local learning coefficient through devinterp: RUN_DIR/llc.csv; pip install 'grokking[llc]')."
        ),
    ] = None,
    llc_sample: Annotated[
        Optional[int], typer.Option(help="LLC: only this many checkpoints, spread evenly (the final one included) [default: all].")
    ] = None,
    llc_every: Annotated[Optional[int], typer.Option(help="LLC: only every N-th checkpoint, counted back from the final one.")] = None,
    llc_lr: LLCLr = 1e-4,
    llc_localization: LLCLocalization = 1000.0,
    llc_nbeta: LLCNbeta = None,
    llc_chains: LLCChains = 4,
    llc_draws: LLCDraws = 200,
    llc_batch_size: LLCBatch = 64,
    llc_seed: LLCSeed = 0,
) -> None:
    """Compute the progress measures for every checkpoint: RUN_DIR/analysis.csv and analysis.json."""
    from grokking.analysis.progress import analyze as run_analysis
    from grokking.store import RunDir

    if sample < 1:
        raise UserError(f"--sample must be at least 1, got {sample}")
    extra = {m.strip() for m in (measures or "").split(",") if m.strip()}
    if extra - {"llc"}:
        raise UserError(f"--measures knows only llc, got '{', '.join(sorted(extra - {'llc'}))}'")
    llc = None
    if "llc" in extra:
        from grokking.analysis.llc import LLCRequest, SGLDSettings

        llc = LLCRequest(
            SGLDSettings(llc_lr, llc_localization, llc_nbeta, llc_chains, llc_draws, 0, llc_batch_size, llc_seed), llc_sample, llc_every
        ).validate()  # a missing devinterp fails before the other measures run
    table = run_analysis(run_dir, sample=sample, sample_seed=sample_seed, llc=llc)
    run = RunDir(run_dir)
    summary = run.read_json(run.analysis_summary_path)
    typer.echo(f"analysed {len(table)} checkpoints -> {run.analysis_path}")
    if summary.get("fourier_note"):
        typer.echo(summary["fourier_note"])
    if "key_frequencies" in summary:
        typer.echo(f"key frequencies {summary['key_frequencies']}; phases {summary['phases']}")
    if summary.get("early_stopping"):
        typer.echo(f"early stopping {summary['early_stopping']}")
    if llc is not None:
        done = table.dropna(subset=["llc_mean"])
        typer.echo(
            f"LLC of {len(done)} checkpoints -> {run.llc_path}"
            + (f"; final {done.llc_mean.iloc[-1]:.4g} ± {done.llc_std.iloc[-1]:.2g}" if len(done) else "")
        )


@app.command("llc-calibrate")
def llc_calibrate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `grokking train`.")],
    step: Annotated[int, typer.Option(help="The checkpoint to sample around.")],
    lr: Annotated[Optional[list[float]], typer.Option("--lr", help="SGLD step sizes to try (repeatable) [default: 1e-6, 1e-5, 1e-4].")] = None,
    localization: Annotated[
        Optional[list[float]], typer.Option("--localization", help="Localizations γ to try (repeatable) [default: 100, 1000, 10000].")
    ] = None,
    nbeta: LLCNbeta = None,
    chains: LLCChains = 4,
    draws: LLCDraws = 200,
    batch_size: LLCBatch = 64,
    seed: LLCSeed = 0,
) -> None:
    """Sweep SGLD step size x localization on one checkpoint: RUN_DIR/llc_calibration.html (loss trace per chain) and .csv."""
    from grokking.analysis.llc import SGLDSettings, calibrate, calibration_tables
    from grokking.reports.llc import write_calibration_page
    from grokking.run import load_run
    from grokking.store import write_csv

    run = load_run(run_dir)
    run.weights(step)  # a missing or unreadable checkpoint fails here, with the nearest step
    base = SGLDSettings(nbeta=nbeta, chains=chains, draws=draws, batch_size=batch_size, seed=seed)
    table, estimates = calibrate(run, step, lr or [1e-6, 1e-5, 1e-4], localization or [100.0, 1000.0, 10000.0], base)
    traces = calibration_tables(estimates)
    write_csv(run.dir.llc_calibration_path, table)
    write_csv(run.dir.llc_calibration_traces_path, traces)
    for row in table.itertuples():
        typer.echo(
            f"lr {row.lr:<8g} localization {row.localization:<8g} LLC {row.llc_mean:9.4g} ± {row.llc_std:<8.2g} "
            f"drift {row.drift:5.2f}  {row.seconds:.0f} s"
        )
    typer.echo(f"calibration: {write_calibration_page(run.dir, step).resolve()}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="An analysed run directory.")],
    patience: Annotated[int, typer.Option(help="Language runs: early-stopping patience, evaluations without a new best val accuracy.")] = 5,
) -> None:
    """Write RUN_DIR/report.html: a self-contained page of plotly figures that opens offline."""
    from grokking.reports import write_report

    typer.echo(f"report: {write_report(run_dir, patience).resolve()}")


@app.command()
def data(
    task: Annotated[str, typer.Argument(help=f"{', '.join(tasks_where('data'))}.")],
    split: Annotated[str, typer.Option(help="Split to print: train, dev, test or gen (digit-addition: train or test).")] = "train",
    n: Annotated[int, typer.Option("-n", help="Number of examples to print.")] = 5,
    seed: Annotated[int, typer.Option(help="Generation seed.")] = 0,
    export: Annotated[Optional[Path], typer.Option(help="Write every split in the published format to this directory.")] = None,
    mix: Annotated[str, typer.Option(help="Structure mix of question-formation / tense-inflection: published or grammar.")] = "published",
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="Print the structure mix of DIR's files (no DIR: the generated splits) next to the published "
            "mix, with the TVD per split (Dyck: lengths, depths and unseen structures against the automaton).",
        ),
    ] = False,
    directory: Annotated[
        Optional[Path], typer.Argument(metavar="[DIR]", help="With --stats: any directory of files in the published format (<stem>.<split>).")
    ] = None,
) -> None:
    """Print examples of a task's data, export its splits (generated, seeded; languages are cached), or --stats."""
    from grokking.config import MIXES

    if mix not in MIXES:
        raise UserError(f"--mix must be one of {', '.join(MIXES)}, got '{mix}'")
    family = family_of(task)
    if family.data is None:
        raise UserError(f"{task} has no data to print: {family.summary}; `grokking data` shows {', '.join(tasks_where('data'))}")
    from grokking.tasks.data_command import DataRequest

    for line in family.resolve("data")(DataRequest(task, split, n, seed, export, mix, stats, directory)):
        typer.echo(line)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A .pt/.pth (read with weights_only) or .safetensors file: one model or a whole run.")],
    format_: Annotated[str, typer.Option("--format", help="tl (TransformerLens names) or nanda (the paper's own layout).")],
    out: Annotated[Path, typer.Option(help="New run directory to write.")],
    p: Annotated[Optional[int], typer.Option(help="Modulus, if the file has no saved config (default 113).")] = None,
    frac_train: Annotated[Optional[float], typer.Option(help="Training fraction, if the file has no saved config (default 0.3).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Split seed, if the file has no saved config (default 0 for nanda, 598 for tl).")] = None,
) -> None:
    """Import models trained elsewhere as a run directory that `analyze` and `report` can read."""
    from grokking.importers import import_run

    run_dir = import_run(file, format_, out, p=p, frac_train=frac_train, data_seed=seed)
    typer.echo(f"imported {file} -> {run_dir}")


@app.command("metric-lens")
def metric_lens(path: Annotated[Path, typer.Argument(help="A sweep directory (sweep.json) or a run directory (a modular one analysed).")]) -> None:
    """The metric-choice lens on emergence: PATH/metric_lens.html and metric_lens.csv (emergence score per metric)."""
    import pandas as pd

    from grokking.experiments.sweep import METRIC_LENS_TABLE
    from grokking.reports.metric_lens import write_metric_lens

    page = write_metric_lens(path)
    scores = pd.read_csv(page.with_name(METRIC_LENS_TABLE))
    for row in scores[~scores.metric.str.contains(r"_L\d+$|_k\d+$")].itertuples():
        typer.echo(
            f"{row.metric:<22} emergence score {row.emergence_score:+9.3g}  ({row.first:.3g} -> {row.last:.3g}; "
            f"10/50/90% of its rise by {row.axis} {row.x_10:g}/{row.x_50:g}/{row.x_90:g})"
        )
    typer.echo(f"metric lens: {page.resolve()}")


@app.command()
def sweep(
    preset: Annotated[str, typer.Argument(help="Preset name (see `grokking presets`).")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", help="Swept key and values: --grid n_layers=2,4,6 (repeatable).")] = None,
    seeds: Annotated[str, typer.Option(help="N for seeds 0..N-1, or a list such as 0,3,7.")] = "1",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Fixed override for every run: --set key=value (repeatable).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Sweep directory [default: checkpoints/sweeps/PRESET-<grid keys>].")] = None,
    executor: Annotated[str, typer.Option(help="local (this machine) or ray.")] = "local",
    address: Annotated[
        Optional[str], typer.Option(help="Ray cluster host:port, or auto for `ray start`'s on this machine [default: a fresh local instance].")
    ] = None,
    max_parallel: Annotated[Optional[int], typer.Option(help="Runs at once [local default 1, in-process; ray default: as many as fit].")] = None,
    num_cpus: Annotated[float, typer.Option(help="CPUs per Ray task.")] = 1.0,
    steps: Annotated[Optional[int], typer.Option(help="Optimiser steps of every run.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
) -> None:
    """Train every grid setting x seed into SWEEP_DIR/runs/; re-running the same command resumes the sweep."""
    from grokking.config import preset_config
    from grokking.experiments.grid import parse_grid, parse_seeds, parse_sets

    preset_config(preset)  # an unknown preset fails here, with the nearest name
    grid_values, seed_list, sets = parse_grid(grid or [], preset), parse_seeds(seeds), parse_sets(set_ or [])
    if executor not in ("local", "ray"):
        raise UserError(f"--executor must be local or ray, got '{executor}'")
    if address is not None and executor != "ray":
        raise UserError("--address is for --executor ray")

    if executor == "ray":
        from grokking.experiments.ray_executor import RayExecutor

        runner = RayExecutor(address, num_cpus=num_cpus, max_parallel=max_parallel)  # a wrong address fails here, fast
    else:
        from grokking.experiments.local import LocalExecutor

        runner = LocalExecutor(max_parallel or 1)

    from grokking.experiments.runner import SweepInterrupted, run_sweep
    from grokking.experiments.sweep import SweepSpec

    try:
        result = run_sweep(SweepSpec(preset, grid_values, seed_list, sets, steps), out, runner, device=device)
    except SweepInterrupted as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(130) from None
    failed = [r for r in result.runs if r.status == "failed"]
    for run in failed:
        typer.echo(f"failed: {run.name} (attempt {run.attempts}): {run.error}", err=True)
    done = sum(r.status == "done" for r in result.runs)
    typer.echo(f"sweep: {done} of {len(result.runs)} runs done -> {result.path}; next: grokking report-sweep {result.path}")
    if failed:
        typer.echo(f"{len(failed)} run(s) failed; re-run the same command to retry them", err=True)
        raise typer.Exit(1)


@app.command("report-sweep")
def report_sweep(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory written by `grokking sweep`.")],
    patience: Annotated[int, typer.Option(help="Early-stopping patience: evaluations without a new best val accuracy.")] = 5,
) -> None:
    """Write SWEEP_DIR/report.html (self-contained), summary.csv (one row per setting) and runs.csv."""
    from grokking.reports.sweep import write_sweep_report

    typer.echo(f"sweep report: {write_sweep_report(sweep_dir, patience=patience).resolve()} (+ summary.csv, runs.csv)")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="An analysed modular run (say, without a gradient filter).")],
    run_b: Annotated[Path, typer.Argument(help="An analysed modular run of the same task (say, with grad_filter=ema).")],
    out: Annotated[Path, typer.Option(help="The page to write.")] = Path("compare.html"),
) -> None:
    """Write a self-contained page comparing two runs: steps to 99% test accuracy, phases, key frequencies,
    restricted/excluded loss aligned by step and by phase."""
    from grokking.reports.grokfast import write_comparison

    typer.echo(f"comparison: {write_comparison(run_a, run_b, out).resolve()}")


def main() -> None:
    """Entry point: user mistakes print one line and exit 2; bugs keep their traceback."""
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
