"""grokking: a lab for grokking and emergence in small transformers.

`grokking.load_run(path)` opens a run directory; the `grokking` command trains, analyses and reports.
Attributes load lazily so that `grokking --help` does not pay for importing torch.
"""

from typing import Any

__all__ = ["Run", "load_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from grokking import run

        return getattr(run, name)
    raise AttributeError(f"module 'grokking' has no attribute {name!r}")
