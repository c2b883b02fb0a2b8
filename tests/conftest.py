"""Shared helpers: tiny configs that train in a second, so the suite stays fast."""

from __future__ import annotations

import pytest

from grokking.config import RunConfig, preset_config


def tiny_config(**overrides: str) -> RunConfig:
    """A small modular-addition run (p=23) that trains in about a second."""
    cfg = preset_config("quick")
    for key, value in {"p": "23", "d_model": "32", "n_heads": "2", "d_head": "16", "d_mlp": "64", "frac_train": "0.5",
                       "steps": "60", "eval_every": "10", "checkpoint_every": "20", "lr": "3e-3", **overrides}.items():
        cfg.set(key, value)
    return cfg


@pytest.fixture
def tiny() -> RunConfig:
    return tiny_config()
