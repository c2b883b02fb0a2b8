"""The task families: the one place that lists the config `task` names and what each family runs.

Every other module asks this registry (`family_of(cfg.task.task)`) instead of testing task names. A
family serves one or more config `task` names and declares, in its one `Family(...)` entry:

- `build`: `(TaskConfig) -> task`, the task object; its `d_vocab`, `d_vocab_out` and `n_ctx` size the
  model (`grokking.tasks.registry.sized`);
- `objective`: `(task, batch_size, device, dtype) -> Objective`, the training loss and evaluation rows;
- `analysis`: `(run, final_step, sample, sample_seed) -> Plan`, what `grokking analyze` measures per checkpoint;
- `report`: `(run_dir, patience) -> Path`, the page `grokking report` writes;
- `data`: `(DataRequest) -> Iterator[str]`, what `grokking data TASK` prints or exports; None when the data
  is made in memory from the config and has nothing to show;
- `check`: `(TaskConfig, TrainConfig) -> None`, the family's config checks (a `UserError` on a bad value);
- flags: `mix` (the `mix` key shapes its data), `batch_seeds` (`--batch-seeds` can train it),
  `lens_from_analysis` (the metric lens over training reads analysis.csv, not metrics.csv).

The callables are "module:attr" strings imported on first use: this module imports no torch, so
`grokking presets`, `grokking data`, config validation and reading a run's config stay fast.

Adding a family is one new module plus one registry entry: write grokking/tasks/<name>.py with the task
object and its builder (reuse an existing objective, analysis plan and report where they fit, else add
yours next to theirs), add its config keys to `TaskConfig` and its checks to config.py, then append one
`Family(...)` to `FAMILIES`. Training, analysis, reports, `grokking data` and validation then know it. A
synthetic language served by `build_lm_data` is the `TASK` (or `TASKS` by mix) of grokking/tasks/<name>.py,
dashes written as underscores, where `grokking.tasks.registry.get_lm_task` finds it.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from grokking.errors import UserError


@dataclass(frozen=True)
class Family:
    """One task family; see the module docstring for what each field is called with."""

    name: str
    summary: str  # one line: what the family is
    tasks: tuple[str, ...]  # the config `task` names it serves
    build: str
    objective: str
    analysis: str
    report: str
    data: str | None
    check: str
    mix: bool = False
    batch_seeds: bool = True
    lens_from_analysis: bool = False

    def resolve(self, hook: str) -> Any:
        """The callable behind field `hook` ("build", "objective", ...), imported now."""
        target = getattr(self, hook)
        if target is None:
            raise UserError(f"{self.name} tasks have no {hook}")
        module, _, attr = target.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj


_LM = "grokking.objectives:LMObjective"  # next-token loss on `<sos> input target <eos>`, scored by the task's metric
_STRUCTURAL = "grokking.analysis.structural_progress:StructuralPlan"

FAMILIES: tuple[Family, ...] = (
    Family(
        "modular",
        "modular arithmetic (a op b) mod p, every pair made in memory (Nanda et al. 2023)",
        tasks=("modular",),
        build="grokking.tasks.modular:ModularTask.from_config",
        objective="grokking.objectives:ModularObjective",
        analysis="grokking.analysis.progress:ModularPlan",
        report="grokking.reports:modular_report",
        data=None,
        check="grokking.config:check_modular",
        lens_from_analysis=True,
    ),
    Family(
        "grammar",
        "synthetic English with gold parses, generated and cached (McCoy et al. 2020; Murty et al. 2023)",
        tasks=("question-formation", "tense-inflection"),
        build="grokking.tasks.registry:build_lm_data",
        objective=_LM,
        analysis=_STRUCTURAL,
        report="grokking.reports.structural:write_structural_report",
        data="grokking.tasks.data_command:language_data",
        check="grokking.config:check_language",
        mix=True,
    ),
    Family(
        "dyck",
        "Dyck-(k, m) bracket strings, generated and cached (Murty et al. 2023)",
        tasks=("dyck",),
        build="grokking.tasks.registry:build_lm_data",
        objective=_LM,
        analysis=_STRUCTURAL,
        report="grokking.reports.structural:write_structural_report",
        data="grokking.tasks.data_command:language_data",
        check="grokking.config:check_language",
    ),
    Family(
        "digit-addition",
        "n-digit + n-digit as a causal LM, made in memory, for the metric-choice lens",
        tasks=("digit-addition",),
        build="grokking.tasks.registry:build_digit_addition_data",
        objective=_LM,
        analysis=_STRUCTURAL,
        report="grokking.reports:addition_report",
        data="grokking.tasks.data_command:addition_data",
        check="grokking.config:check_addition",
    ),
    Family(
        "icl-functions",
        "in-context regression on real-valued prompts, sampled in memory (Garg et al. 2022)",
        tasks=("icl-functions",),
        build="grokking.tasks.icl_functions:from_config",
        objective="grokking.icl_objective:ICLObjective",
        analysis="grokking.analysis.icl:ICLPlan",
        report="grokking.reports:icl_report",
        data=None,
        check="grokking.config:check_icl",
        batch_seeds=False,
    ),
)

TASK_NAMES: tuple[str, ...] = tuple(task for family in FAMILIES for task in family.tasks)
_BY_TASK = {task: family for family in FAMILIES for task in family.tasks}


def family_of(task: str) -> Family:
    """The family serving config task name `task`, or a one-line error with the nearest name."""
    if task not in _BY_TASK:
        close = difflib.get_close_matches(task, TASK_NAMES, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise UserError(f"unknown task '{task}'{hint}; choose one of {', '.join(TASK_NAMES)}")
    return _BY_TASK[task]


def tasks_where(flag: str) -> tuple[str, ...]:
    """The task names whose family has `flag` set ("mix", "batch_seeds", ...) or hook given ("data", ...)."""
    return tuple(task for task in TASK_NAMES if getattr(_BY_TASK[task], flag))
