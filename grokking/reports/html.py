"""Assemble plotly figures into one self-contained HTML page that opens offline.

plotly.js is inlined once (about 4 MB), so the page needs no network; each figure is a div.
"""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from grokking.store import atomic_write

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
p.note { color: #555; max-width: 60em; }
table.summary { border-collapse: collapse; } table.summary td, table.summary th { padding: 2px 12px; border-bottom: 1px solid #eee; text-align: left; }
"""


PHASE_COLOURS = ("rgba(31,119,180,0.10)", "rgba(255,127,14,0.12)", "rgba(44,160,44,0.12)")
PHASE_NAMES = ("memorisation", "circuit formation", "cleanup")


def shade_phases(fig: go.Figure, phases: dict, rows_cols: list[tuple[int, int]] | None = None) -> None:
    """Shade the three phases of `grokking.analysis.phases` (analysis.json's `phases`); with subplots, on every listed (row, col)."""
    bounds = [0, phases.get("memorisation_end"), phases.get("circuit_formation_end"), phases.get("cleanup_end")]
    targets = rows_cols or [(None, None)]
    for i, (x0, x1) in enumerate(zip(bounds[:-1], bounds[1:])):
        if x0 is None or x1 is None:
            continue
        for row, col in targets:
            label = {"annotation_text": PHASE_NAMES[i], "annotation_position": "top left", "annotation_font_size": 10}
            fig.add_vrect(
                x0=x0, x1=x1, fillcolor=PHASE_COLOURS[i], line_width=0, layer="below", row=row, col=col, **(label if (row, col) == targets[0] else {})
            )


def step_slider(steps: list[int], traces_per_step: int, prefix: str = "step ") -> list[dict]:
    """A slider that shows the traces of one step at a time (traces are laid out step-major)."""
    n = len(steps) * traces_per_step
    options = []
    for i, step in enumerate(steps):
        visible = [False] * n
        visible[i * traces_per_step : (i + 1) * traces_per_step] = [True] * traces_per_step
        options.append({"method": "update", "label": str(step), "args": [{"visible": visible}]})
    return [{"active": len(steps) - 1, "currentvalue": {"prefix": prefix}, "steps": options, "pad": {"t": 40}}]


class Page:
    """An HTML page of headed sections, each with an optional note, a table and figures."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def section(self, heading: str, note: str = "") -> Page:
        self.parts.append(f"<h2>{html.escape(heading)}</h2>")
        if note:
            self.parts.append(f'<p class="note">{html.escape(note)}</p>')
        return self

    def table(self, rows: dict[str, object]) -> Page:
        cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items())
        self.parts.append(f'<table class="summary">{cells}</table>')
        return self

    def figure(self, fig: go.Figure) -> Page:
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}))
        return self

    def write(self, path: Path) -> None:
        body = "\n".join(self.parts)
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>"
        )
        atomic_write(path, page.encode())
