"""Early-stopping logic on hand-made metric curves."""

from __future__ import annotations

import pandas as pd

from grokking.analysis.early_stopping import early_stopping


def curves(val: list[float], gen: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"step": [100 * i for i in range(len(val))], "val_acc": val, "gen_acc": gen})


def test_structural_grokking_is_hidden_by_early_stopping() -> None:
    val = [0.3, 0.9, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    gen = [0.1, 0.1, 0.05, 0.1, 0.2, 0.4, 0.7, 0.85, 0.9, 0.95]
    es = early_stopping(curves(val, gen), patience=3)
    assert (es.step_at_max_val, es.gen_at_max_val) == (200, 0.05)
    # No improvement at evaluations 3, 4, 5: the patience rule stops at step 500.
    assert (es.step_at_patience_stop, es.gen_at_patience_stop) == (500, 0.4)
    assert (es.final_step, es.gen_at_end, es.max_gen) == (900, 0.95, 0.95)
    assert es.first_step_gen_above_80 == 700


def test_patience_never_triggers_on_a_rising_curve() -> None:
    es = early_stopping(curves([0.1, 0.2, 0.3, 0.4], [0.0, 0.1, 0.5, 0.6]), patience=2)
    assert es.step_at_patience_stop == 300 and es.step_at_max_val == 300
    assert es.first_step_gen_above_80 is None
