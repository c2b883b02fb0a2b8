"""The task-family registry: every family builds a tiny task and names hooks that resolve; unknown names fail in one
line; building a task changes no config; one function assembles a run's config for the CLI and sweeps."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grokking.cli import main
from grokking.config import PRESETS, RunConfig, assemble_config
from grokking.errors import UserError
from grokking.experiments.grid import run_config
from grokking.families import FAMILIES, TASK_NAMES, family_of
from grokking.tasks.data_command import DataRequest
from grokking.tasks.registry import build_task, languages, sized
from grokking.train import build_model, train

TINY = {
    "n_layers": "1",
    "d_model": "16",
    "n_heads": "2",
    "d_head": "8",
    "d_mlp": "32",
    "batch_size": "4",
    "eval_examples": "8",
    "p": "23",
    "n_train": "50",
    "n_points": "4",
}


def preset_of(task: str) -> str:
    """A preset that trains `task`: every family must be reachable from `grokking train`."""
    names = [name for name, (_, make) in PRESETS.items() if make().task.task == task]
    assert names, f"no preset trains {task}"
    return names[0]


def tiny_config(task: str, data_dir: Path) -> RunConfig:
    """The task's preset made tiny; a synthetic language reads 8 generated lines per split from `data_dir`."""
    sets = dict(TINY)
    if task in languages():  # the module a language lives in (`get_lm_task`), generating 8 lines per split
        module = importlib.import_module(f"grokking.tasks.{task.replace('-', '_')}")
        small = module.make_task(sizes={split: 8 for split in module.SIZES})
        small.write(data_dir, small.generate(0))
        sets["data_dir"] = str(data_dir)
    return assemble_config(preset_of(task), sets)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_builds_trains_one_step_and_names_hooks_that_resolve(task: str, tmp_path: Path) -> None:
    cfg = tiny_config(task, tmp_path)
    family = family_of(task)
    assert task in family.tasks and sum(task in f.tasks for f in FAMILIES) == 1
    before = cfg.to_dict()
    data = build_task(cfg)
    assert cfg.to_dict() == before, "building a task must leave the config as it is"
    model_cfg = sized(cfg, data).model
    assert (model_cfg.d_vocab, model_cfg.d_vocab_out, model_cfg.n_ctx) == (data.d_vocab, data.d_vocab_out, data.n_ctx)
    assert min(data.d_vocab, data.d_vocab_out, data.n_ctx) >= 1
    objective = family.resolve("objective")(data, cfg.train.batch_size, torch.device("cpu"), None)
    getattr(objective, "set_step", lambda step: None)(0)
    loss, _ = objective.step_loss(build_model(sized(cfg, data)), torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    plan = family.resolve("analysis")
    assert callable(plan.row) and callable(plan.finish)
    assert list(inspect.signature(plan).parameters) == ["run", "final_step", "sample", "sample_seed"]
    assert len(inspect.signature(family.resolve("report")).parameters) == 2  # (run_dir, patience)
    assert family.data is None or len(inspect.signature(family.resolve("data")).parameters) == 1
    family.resolve("check")(cfg.task, cfg.train)  # the tiny config passes its family's checks


def test_the_registry_imports_no_torch() -> None:
    """`grokking presets`, `grokking data`'s parsing and config validation stay fast."""
    code = (
        "import sys; from grokking.config import assemble_config; assemble_config('quick'); "
        "import grokking.families, grokking.cli; print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_an_unknown_task_is_one_line_with_the_nearest_name(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(UserError, match=r"^unknown task 'modulr' \(did you mean 'modular'\?\)"):
        family_of("modulr")
    cfg = assemble_config("quick")
    cfg.task.task = "tense-inflect"
    with pytest.raises(UserError, match="did you mean 'tense-inflection'"):
        cfg.validate()
    monkeypatch.setattr(sys, "argv", ["grokking", "train", "quick", "--set", "task=dyk"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "did you mean 'dyck'" in err and len(err.strip().splitlines()) == 1


def test_grokking_data_prints_digit_addition_and_says_why_modular_has_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(sys, "argv", ["grokking", "data", "digit-addition", "--split", "test", "-n", "3"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:  # `a + b =` with 3-digit operands, then the 4 answer digits least significant first
        question, answer = line.split("\t")
        a, b = ("".join(part.split()) for part in question.rstrip(" =").split(" + "))
        assert "".join(reversed(answer.split())) == f"{int(a) + int(b):04d}"
    exported = list(family_of("digit-addition").resolve("data")(DataRequest("digit-addition", export=tmp_path)))
    assert [Path(p).name for p in exported] == ["addition.train", "addition.test"]
    assert len(Path(exported[1]).read_text().splitlines()) == RunConfig().task.eval_examples
    monkeypatch.setattr(sys, "argv", ["grokking", "data", "modular"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "modular has no data to print" in err


def test_one_assembly_serves_the_cli_and_sweeps() -> None:
    cfg = assemble_config("quick", {"lr": "0.01", "seed": "5", "device": "cuda"}, seed=7, steps=10, device="cpu")
    assert (cfg.train.lr, cfg.train.seed, cfg.train.steps, cfg.train.device) == (0.01, 7, 10, "cpu")  # flags win over --set
    swept = run_config("quick", {"lr": "0.01"}, {"n_layers": 2, "betas": [0.8, 0.9], "seed": 3}, 10)
    direct = assemble_config("quick", {"lr": "0.01"}, steps=10, extra={"n_layers": "2", "betas": "0.8,0.9", "seed": "3"})
    assert swept.to_dict() == direct.to_dict() and swept.model.n_layers == 2 and swept.train.betas == (0.8, 0.9)
    with pytest.raises(UserError, match="p must be a prime"):
        assemble_config("quick", {"p": "24"})


def test_training_records_the_task_sizes_in_config_json(tmp_path: Path) -> None:
    cfg = assemble_config("quick", {**TINY, "steps": "2", "eval_every": "1", "checkpoint_every": "1"})
    trainer = train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (saved["d_vocab"], saved["d_vocab_out"], saved["n_ctx"]) == (24, 23, 3)  # p + 1 tokens (with `=`), p answers, a b =
    assert trainer.cfg.model.d_vocab == 24 and cfg.model.d_vocab == 0  # the caller's config is left as it was


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_trains_analyses_and_reports_through_its_family(task: str, tmp_path: Path) -> None:
    from grokking.analysis.progress import analyze
    from grokking.reports import write_report

    cfg = tiny_config(task, tmp_path / "data")
    for key, value in {"steps": "2", "eval_every": "1", "checkpoint_every": "1", "warmup_steps": "1"}.items():
        cfg.set(key, value)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    assert len(analyze(run, sample=8, progress=False)) == 3  # checkpoints at steps 0, 1, 2
    assert write_report(run).read_text().lstrip().lower().startswith("<!doctype html")
