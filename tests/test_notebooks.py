"""Every notebook runs top to bottom on a fresh clone: missing runs are trained into a temporary directory
(GROKKING_NOTEBOOK_RUNS), shared by the notebooks so later ones reuse earlier ones' runs. A notebook that would
train `quick` finds a copy of the session's `quick_run` there instead. Notebooks are committed without outputs,
so diffs stay reviewable."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


@pytest.fixture(scope="module")
def notebook_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    runs = tmp_path_factory.mktemp("notebook-runs")
    with pytest.MonkeyPatch.context() as patch:  # the kernel inherits the environment
        patch.setenv("GROKKING_NOTEBOOK_RUNS", str(runs))
        yield runs


def test_there_are_notebooks() -> None:
    assert {"01_modular_addition.ipynb", "02_structural_grokking.ipynb", "04_metric_choice.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs before committing"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, notebook_runs: Path, request: pytest.FixtureRequest) -> None:
    nb = nbformat.read(path, as_version=4)
    trains_quick = any('preset_config("quick")' in cell.source for cell in nb.cells)  # into RUNS / "quick" when missing
    if trains_quick and not (notebook_runs / "quick").exists():
        shutil.copytree(request.getfixturevalue("quick_run"), notebook_runs / "quick")  # a copy: notebooks add files to it
    # Raises CellExecutionError, with the cell and its traceback, on the first error.
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
