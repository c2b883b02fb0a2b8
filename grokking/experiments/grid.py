"""From command-line text to the runs of a sweep: `--grid key=v1,v2`, `--seeds`, `--set`, run names.

Grid values are parsed by `RunConfig.set`, the same parser as `grokking train --set`, so a value has
the type of its config field (`n_layers=2` is the int 2, `weight_decay=1` the float 1.0) and a
mistake gives the same one-line message, with the nearest key suggested. This module imports no
torch: a malformed grid fails in a fraction of a second.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from grokking.config import RunConfig, assemble_config, preset_config
from grokking.errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


def parse_assignment(item: str, flag: str) -> tuple[str, str]:
    """`key=value` -> (key, value), or a one-line error naming the flag."""
    key, sep, value = item.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise UserError(f"{flag} expects key=value, got '{item}'")
    return key, value


def parse_grid(items: list[str], preset: str) -> dict[str, list[Any]]:
    """`["n_layers=2,4", "weight_decay=0.3,1"]` -> `{"n_layers": [2, 4], "weight_decay": [0.3, 1.0]}`, in flag order."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, raw = parse_assignment(item, "--grid")
        if key == "seed":
            raise UserError("--grid cannot take seed; use --seeds N (seeds 0..N-1) or --seeds 0,3,7")
        if key in grid:
            raise UserError(f"--grid {key} given twice; list all its values once: --grid {key}=v1,v2")
        parts = [p.strip() for p in raw.split(",")]
        if "" in parts:
            raise UserError(f"--grid {item}: empty value in the list; write --grid {key}=v1,v2,...")
        values = [typed_value(preset, key, part) for part in parts]
        if len(set(map(str, values))) != len(values):
            raise UserError(f"--grid {item}: a value is repeated")
        grid[key] = values
    return grid


def typed_value(preset: str, key: str, raw: str) -> Any:
    """`raw` parsed to the type of config field `key` (through `RunConfig.set`)."""
    cfg = preset_config(preset)
    try:
        cfg.set(key, raw)
    except UserError as exc:
        raise UserError(f"--grid {key}: {exc}") from None
    value = _field(cfg, key)
    return list(value) if isinstance(value, tuple) else value


def parse_seeds(text: str) -> list[int]:
    """`"10"` -> seeds 0..9; `"0,3,7"` (or `"5,"`) -> exactly those seeds."""
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise UserError(f"--seeds expects a count N (seeds 0..N-1) or a list like 0,3,7, got '{text}'") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds needs at least one seed, none negative or repeated, got '{text}'")
    return seeds


def parse_sets(items: list[str]) -> dict[str, str]:
    """`--set key=value` overrides, kept as the strings the user typed (they go through `RunConfig.set`)."""
    return dict(parse_assignment(item, "--set") for item in items)


def run_name(params: dict[str, Any]) -> str:
    """`{"n_layers": 2, "seed": 0}` -> `n_layers=2_seed=0`; characters unsafe in a path become `-`."""
    return "_".join(_UNSAFE.sub("-", f"{k}={v}") for k, v in params.items())


def grid_params(grid: dict[str, list[Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """Every run's parameters: the grid's product in flag order, seed last (varying fastest)."""
    combos = itertools.product(*grid.values(), seeds)
    return [{**dict(zip(grid, combo[:-1])), "seed": combo[-1]} for combo in combos]


def run_config(preset: str, sets: dict[str, str], params: dict[str, Any], steps: int | None, device: str | None = None) -> RunConfig:
    """The validated config of one run: preset, then `--set`, then the run's grid values and seed."""
    try:
        return assemble_config(preset, sets, steps=steps, device=device, extra={k: _raw(v) for k, v in params.items()})
    except UserError as exc:
        raise UserError(f"run {run_name(params)}: {exc}") from None


def _raw(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _field(cfg: RunConfig, key: str) -> Any:
    for group in (cfg.model, cfg.task, cfg.train):
        if hasattr(group, key):
            return getattr(group, key)
    raise KeyError(key)
