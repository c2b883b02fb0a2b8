"""Early stopping versus extended training, from a run's metrics (the structural-grokking question).

Two early-stopping rules on in-distribution validation accuracy: stop at the first evaluation that
reaches the run's maximum `val_acc` (the optimistic rule: it needs the whole curve), and stop once
`val_acc` has not improved for `patience` evaluations (the rule a practitioner would run online).
Against them: gen accuracy at the end, its maximum, and when it first crossed 80%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

GEN_SUCCESS = 0.8


@dataclass(frozen=True)
class EarlyStopping:
    step_at_max_val: int
    gen_at_max_val: float
    patience: int
    step_at_patience_stop: int
    gen_at_patience_stop: float
    final_step: int
    gen_at_end: float
    max_gen: float
    first_step_gen_above_80: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def early_stopping(metrics: pd.DataFrame, patience: int = 5) -> EarlyStopping:
    """Both early-stopping points of one run and what gen accuracy was there and later."""
    m = metrics.sort_values("step").reset_index(drop=True)
    at_max = int(m.val_acc.idxmax())  # idxmax returns the first maximum
    best, since, stop = -1.0, 0, len(m) - 1
    for i, val in enumerate(m.val_acc):
        if val > best:
            best, since = val, 0
        else:
            since += 1
            if since >= patience:
                stop = i
                break
    above = m.step[m.gen_acc >= GEN_SUCCESS]
    return EarlyStopping(
        step_at_max_val=int(m.step[at_max]),
        gen_at_max_val=float(m.gen_acc[at_max]),
        patience=patience,
        step_at_patience_stop=int(m.step[stop]),
        gen_at_patience_stop=float(m.gen_acc[stop]),
        final_step=int(m.step.iloc[-1]),
        gen_at_end=float(m.gen_acc.iloc[-1]),
        max_gen=float(m.gen_acc.max()),
        first_step_gen_above_80=int(above.iloc[0]) if len(above) else None,
    )
