"""Phase detection on hand-made curves whose boundaries are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from grokking.analysis.phases import detect_phases


def synthetic_run(p: int = 113) -> pd.DataFrame:
    """Test loss rises to a peak at step 1500, crosses chance at 9000; the weight norm falls 9000 -> 12000."""
    steps = np.arange(0, 20_001, 100)
    test_loss = np.where(steps <= 1500, math.log(p) + steps / 1500 * 20, 0.0)
    falling = (steps > 1500) & (steps < 9000)
    test_loss[falling] = math.log(p) + 20 * (9000 - steps[falling]) / 7500 + 0.01
    late = steps >= 9000
    test_loss[late] = math.log(p) * np.exp(-(steps[late] - 9000) / 500) * 0.99
    norm = np.where(steps < 9000, 100.0, np.maximum(100 - (steps - 9000) / 3000 * 80, 20.0))
    return pd.DataFrame({"step": steps, "test_loss": test_loss, "total_sq_weight_norm": norm})


def test_boundaries_on_known_curves() -> None:
    phases = detect_phases(synthetic_run(), 113)
    assert phases.memorisation_end == 1500
    assert phases.circuit_formation_end == 9000
    # 90% of the fall from 100 to 20 is reached at 9000 + 0.9 * 3000 = 11700.
    assert phases.cleanup_end == 11700
    assert phases.boundaries() == sorted(phases.boundaries())


def test_detection_is_stable_and_order_independent() -> None:
    table = synthetic_run()
    shuffled = table.sample(frac=1.0, random_state=0)
    assert detect_phases(table, 113) == detect_phases(shuffled, 113) == detect_phases(table.copy(), 113)


def test_a_run_that_never_groks_gets_only_memorisation() -> None:
    table = synthetic_run()
    table["test_loss"] = np.maximum(table.test_loss, math.log(113) + 1)
    phases = detect_phases(table, 113)
    assert phases.memorisation_end is not None
    assert phases.circuit_formation_end is None and phases.cleanup_end is None
