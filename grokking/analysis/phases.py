"""The three phases of grokking (memorisation, circuit formation, cleanup), found from the curves.

The rule, with no step numbers typed in by hand (only chance level, which follows from p):

1. **Memorisation ends** at the step where the test loss peaks, searched up to the point where the
   test loss first drops below chance: train loss is already small, and memorising has gone as far
   as it goes before the circuit takes over.
2. **Circuit formation ends** (cleanup starts) at the first later step where the test loss falls
   below chance level ln(p): the model is now better than guessing on unseen pairs.
3. **Cleanup ends** at the first step after that where the total squared weight norm has finished
   90% of its fall from the start of cleanup to its lowest value afterwards: weight decay has swept
   away the memorising weights.

The rule is a pure function of the table, so re-running it on the same run gives the same
boundaries. A run that never beats chance on the test set gets only the first boundary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pandas as pd

CLEANUP_FRACTION = 0.9


@dataclass(frozen=True)
class Phases:
    memorisation_end: int | None
    circuit_formation_end: int | None
    cleanup_end: int | None

    def boundaries(self) -> list[int]:
        return [s for s in (self.memorisation_end, self.circuit_formation_end, self.cleanup_end) if s is not None]

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def detect_phases(table: pd.DataFrame, p: int) -> Phases:
    """Phase boundaries from a table with `step`, `test_loss` and (optionally) `total_sq_weight_norm`."""
    table = table.sort_values("step").reset_index(drop=True)
    if table.empty:
        return Phases(None, None, None)
    chance = math.log(p)
    below = table.index[table.test_loss < chance]
    # Start the search after the first step: at initialisation the test loss is already near chance.
    below = below[below > 0]
    grok = int(below[0]) if len(below) else None
    search = table.iloc[: grok if grok is not None else len(table)]
    memorisation_end = int(search.step[search.test_loss.idxmax()])
    if grok is None:
        return Phases(memorisation_end, None, None)
    circuit_end = int(table.step[grok])
    cleanup_end = None
    if "total_sq_weight_norm" in table:
        norms = table.total_sq_weight_norm.iloc[grok:]
        fall = norms.iloc[0] - norms.min()
        if fall > 0:
            done = norms.index[norms <= norms.iloc[0] - CLEANUP_FRACTION * fall]
            cleanup_end = int(table.step[done[0]])
    return Phases(memorisation_end, circuit_end, cleanup_end)
