"""Reports: plotly figures and self-contained HTML pages, built from a run's tables only."""
