"""The three phases of grokking (memorisation, circuit formation, cleanup), found from the curves.

The rule, with no step numbers typed in by hand (only chance level, which follows from p):

0. The test loss is first **smoothed** by a centred running median over `SMOOTH_WINDOW` evaluations:
   one evaluation's dip or spike (noise, a single lucky checkpoint) cannot move a boundary, while a
   step in the curve stays where it is.
1. **Circuit formation ends** (cleanup starts) at the first step from which the smoothed test loss
   stays below chance level ln(p) for `PERSISTENCE` consecutive evaluations (or to the end of the
   run, if fewer remain): the model is now lastingly better than guessing on unseen pairs.
2. **Memorisation ends** at the step where the smoothed test loss peaks between the second evaluation
   and that point (in the whole run, if it never gets there): train loss is already small, and memorising has gone as far
   as it goes before the circuit takes over.
3. **Cleanup ends** at the first step after circuit formation where the total squared weight norm has
   finished 90% of its fall from the start of cleanup to its lowest value afterwards: weight decay
   has swept away the memorising weights.

Why smoothing and persistence: the rule used to take the first evaluation below chance, so a single
dip of the test loss at step 100 made memorisation end at 0 and circuit formation end at 100. The
rule is a pure function of the table, so re-running it on the same run gives the same boundaries. A
run that never lastingly beats chance on the test set gets only the first boundary.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

CLEANUP_FRACTION = 0.9
SMOOTH_WINDOW = 5  # evaluations in the running median (centred): removes runs of up to 2 outliers
PERSISTENCE = 5  # consecutive smoothed evaluations below chance that count as "beats chance"


@dataclass(frozen=True)
class Phases:
    memorisation_end: int | None
    circuit_formation_end: int | None
    cleanup_end: int | None

    def boundaries(self) -> list[int]:
        return [s for s in (self.memorisation_end, self.circuit_formation_end, self.cleanup_end) if s is not None]

    def to_dict(self) -> dict[str, int | None]:
        return asdict(self)


def smoothed_test_loss(test_loss: pd.Series, window: int = SMOOTH_WINDOW) -> pd.Series:
    """Centred running median of the test loss (shorter windows at the ends)."""
    return test_loss.rolling(window, center=True, min_periods=1).median()


def first_lasting_below(values: pd.Series, level: float, persistence: int = PERSISTENCE, start: int = 0) -> int | None:
    """Position (>= `start`) of the first value below `level` that the next `persistence - 1` values (or all remaining) stay below."""
    below = (values < level).to_numpy()
    n = len(below)
    for i in np.flatnonzero(below[start:]) + start:
        if below[i : min(i + persistence, n)].all():
            return int(i)
    return None


def detect_phases(table: pd.DataFrame, p: int) -> Phases:
    """Phase boundaries from a table with `step`, `test_loss` and (optionally) `total_sq_weight_norm`."""
    table = table.sort_values("step").reset_index(drop=True)
    if table.empty:
        return Phases(None, None, None)
    smooth = smoothed_test_loss(table.test_loss)
    # Search after the first evaluation: at initialisation the test loss is already near chance.
    grok = first_lasting_below(smooth, math.log(p), start=1)
    # The peak is searched from the second evaluation on too: the running median's short window at the
    # start would otherwise make the initial, still-at-chance evaluation look like the top of a fall.
    # A run already below chance at its second evaluation (sparse checkpoints) has no peak to find.
    search = smooth.iloc[min(1, len(table) - 1) : grok if grok is not None else len(table)]
    memorisation_end = int(table.step[search.idxmax()]) if len(search) else None
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
