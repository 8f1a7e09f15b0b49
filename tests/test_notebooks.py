"""The notebooks in notebooks/ execute without error (outputs are not compared).

The quick start runs in the default test run; the longer notebooks are marked
slow (``pytest -m slow``)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
DEFAULT = {"quickstart"}


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p.stem, marks=() if p.stem in DEFAULT else pytest.mark.slow)
    for p in NOTEBOOKS])
def test_notebook_executes(path):
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()
