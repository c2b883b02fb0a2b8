"""Grokfast gradient filters: known filtered values, `none` untouched, exact resume, batched seeds = solo runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from grokking.batched import seed_config, train_batched
from grokking.config import RunConfig, preset_config
from grokking.errors import UserError
from grokking.grad_filter import GradFilter
from grokking.reports.grokfast import Side, comparison, phase_time
from grokking.store import RunDir
from grokking.train import Trainer, lr_at, train

from conftest import assert_bit_identical, final_weights, tiny_config

# Exactly representable gradients and coefficients, so the filtered values below are exact in fp32.
GRADS = [[1.0, 2.0], [3.0, -2.0], [5.0, 0.0], [1.0, 1.0]]


def filtered(filter_sets: dict[str, str]) -> list[list[float]]:
    """What the filter makes of GRADS fed one per step to a single parameter."""
    tr = tiny_config(**filter_sets).train
    param = torch.zeros(2, requires_grad=True)
    grad_filter = GradFilter(tr, {"w": param})
    out = []
    for g in GRADS:
        param.grad = torch.tensor(g)
        grad_filter()
        out.append(param.grad.tolist())
    return out


def test_ema_gives_the_known_values() -> None:
    # mu_1 = g_1 (the paper starts mu at the first gradient); mu_t = 0.5 mu_{t-1} + 0.5 g_t; out = g_t + 2 mu_t
    # mu: [1,2], [2,0], [3.5,0], [2.25,0.5]
    assert filtered({"grad_filter": "ema", "grad_filter_alpha": "0.5", "grad_filter_lambda": "2"}) == [
        [3.0, 6.0],
        [7.0, -2.0],
        [12.0, 0.0],
        [5.5, 2.0],
    ]


def test_ma_gives_the_known_values_once_the_window_is_full() -> None:
    # window 2, lambda 1: step 1 passes through (window not full), then out = g_t + mean(g_{t-1}, g_t)
    assert filtered({"grad_filter": "ma", "grad_filter_window": "2", "grad_filter_lambda": "1"}) == [[1.0, 2.0], [5.0, -2.0], [9.0, -1.0], [4.0, 1.5]]


def test_bad_filter_settings_are_one_line_errors() -> None:
    for key, value in (("grad_filter", "emma"), ("grad_filter_alpha", "1"), ("grad_filter_lambda", "-1"), ("grad_filter_window", "0")):
        with pytest.raises(UserError, match=key):
            tiny_config(**{key: value}).validate()


def _hand_trained(cfg: RunConfig, where: Path) -> dict[str, torch.Tensor]:
    """The update as it was before filters existed: zero_grad, backward, AdamW step; no filter code on the path."""
    trainer = Trainer(cfg, RunDir(where), torch.device("cpu"))
    for step in range(cfg.train.steps):
        loss, _ = trainer.step_loss()
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.train)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    return {name: value.detach() for name, value in trainer.model.state_dict().items()}


def test_none_is_bit_identical_to_training_without_the_filter(tmp_path: Path) -> None:
    cfg = tiny_config(steps="40")
    assert cfg.train.grad_filter == "none"
    train(cfg, tmp_path / "none", progress=False)
    by_hand = _hand_trained(cfg, tmp_path / "hand")
    weights = final_weights(tmp_path / "none")
    for name, value in weights.items():
        assert torch.equal(value, by_hand[name]), name
    assert not any(k.startswith("filter.") for k in RunDir(tmp_path / "none").read_resume()[0])
    # and the filter does change training, so the comparison above could fail
    train(tiny_config(steps="40", grad_filter="ema"), tmp_path / "ema", progress=False)
    assert not torch.equal(final_weights(tmp_path / "ema")["embed.W_E"], weights["embed.W_E"])


@pytest.mark.parametrize(
    "sets",
    [{"grad_filter": "ema"}, {"grad_filter": "ma", "grad_filter_window": "7"}, {"grad_filter": "ema", "batch_size": "16", "grad_clip": "0.05"}],
)
def test_resume_with_a_filter_is_bit_identical(tmp_path: Path, sets: dict[str, str]) -> None:
    train(tiny_config(steps="20", checkpoint_every="10", **sets), tmp_path / "a", progress=False)  # stops at 20 (a checkpoint)
    assert any(k.startswith("filter.") for k in RunDir(tmp_path / "a").read_resume()[0])
    train(tiny_config(steps="40", checkpoint_every="10", **sets), tmp_path / "a", progress=False)
    train(tiny_config(steps="40", checkpoint_every="10", **sets), tmp_path / "b", progress=False)
    assert_bit_identical(tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("sets", [{"grad_filter": "ema", "batch_size": "16", "grad_clip": "0.05"}, {"grad_filter": "ma", "grad_filter_window": "5"}])
def test_batched_seeds_with_a_filter_match_their_solo_runs_and_resume(tmp_path: Path, sets: dict[str, str]) -> None:
    seeds = [0, 1]
    half, full = tiny_config(steps="20", checkpoint_every="10", **sets), tiny_config(steps="40", checkpoint_every="10", **sets)
    train_batched(half, seeds, [tmp_path / "batched" / f"seed{s}" for s in seeds], progress=False)
    train_batched(full, seeds, [tmp_path / "batched" / f"seed{s}" for s in seeds], progress=False)  # resumes at 20
    for s in seeds:
        train(seed_config(full, s), tmp_path / "solo" / f"seed{s}", progress=False)
        # measured: bit-identical (every filter operation is elementwise, so a seed's slice rounds as its solo run)
        assert_bit_identical(tmp_path / "batched" / f"seed{s}", tmp_path / "solo" / f"seed{s}")


def test_phase_time_puts_a_compressed_copy_of_the_phases_on_the_original() -> None:
    slow = {"memorisation_end": 100, "circuit_formation_end": 300, "cleanup_end": 400}
    fast = {k: v // 4 for k, v in slow.items()}
    steps = np.array([0, 50, 100, 200, 300, 400, 500], float)
    assert phase_time(steps, slow).tolist() == [0, 0.5, 1, 1.5, 2, 3, 4]  # past cleanup: at cleanup's pace
    assert phase_time(steps / 4, fast).tolist() == phase_time(steps, slow).tolist()
    assert np.isnan(phase_time(steps, {"memorisation_end": 0, "circuit_formation_end": None})).all()


def _side(name: str, test_acc: list[float], keys: list[int]) -> Side:
    metrics = pd.DataFrame({"step": [0, 100, 200, 300], "train_acc": [0.0, 1.0, 1.0, 1.0], "test_acc": test_acc})
    config = preset_config("quick")
    config.set("p", "23")
    config.set("frac_train", "0.5")
    return Side(Path(name), config, metrics, pd.DataFrame(), {"key_frequencies": keys, "phases": {}}, None)


def test_comparison_reports_the_speed_up_and_the_shared_key_frequencies() -> None:
    result = comparison(_side("a", [0.0, 0.1, 0.5, 0.995], [3, 7]), _side("b", [0.0, 0.99, 1.0, 1.0], [7, 9]))
    assert [row["test acc >= 99% at"] for row in result["rows"]] == [300, 100]
    assert result["speed-up to 99% test acc (A steps / B steps)"] == 3.0
    assert result["key frequencies shared / only A / only B"] == ([7], [3], [9])
    assert result["same key frequencies"] is False
