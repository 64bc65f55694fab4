"""The notebooks run top to bottom (TensorFlow, as `make demo`), so they cannot rot."""

import os
import pathlib

import pytest
from conftest import only_backends

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@only_backends("tensorflow", reason="the notebooks' own backend (make demo's); slow elsewhere")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    client.execute()
