"""The stages' papermill engine: same execution, but the kernel is killed instead of asked to exit."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest
from papermill.engines import papermill_engines

from eden_lib.pipeline.papermill_engine import ImmediateShutdownEngine

pytestmark = pytest.mark.slow


def _notebook(path: Path, marker: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("x = 2", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            f"import atexit, pathlib\natexit.register(pathlib.Path({str(marker)!r}).touch)\nprint(x * 21)"),
    ]
    nbformat.write(nb, path)


def test_the_entry_point_names_the_engine():
    assert papermill_engines.get_engine("eden") is ImmediateShutdownEngine


@pytest.mark.parametrize("engine, exits_gracefully", [("nbclient", True), ("eden", False)])
def test_cells_run_and_only_the_default_engine_lets_the_kernel_exit(tmp_path, engine, exits_gracefully):
    marker = tmp_path / "atexit-ran"
    _notebook(tmp_path / "in.ipynb", marker)
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), parameters={"x": 3},
                               engine_name=engine, progress_bar=False)
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[-1].outputs[0]["text"] == "63\n"
    assert marker.exists() is exits_gracefully
