"""Sweeps over many runs (grid values x seeds), run locally or on a Ray cluster.

    grid.py          command-line grid, seeds and --set -> run names and configs (no torch)
    sweep.py         the sweep directory and sweep.json; `load_sweep(path)` for reading
    runner.py        `run_sweep`: the driver loop, progress bar, resume, Ctrl-C
    worker.py        one run, trained the same way by every executor
    local.py         in-process or subprocess execution
    ray_executor.py  Ray tasks, with or without a disk shared with the driver

`from grokking.experiments import load_sweep, run_sweep, SweepSpec`. Names load lazily, so that
parsing a grid (grid.py) does not import torch.
"""

from importlib import import_module
from typing import Any

_WHERE = {"Sweep": "sweep", "SweepRun": "sweep", "SweepSpec": "sweep", "load_sweep": "sweep", "SweepInterrupted": "runner", "run_sweep": "runner"}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"grokking.experiments.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'grokking.experiments' has no attribute {name!r}")
