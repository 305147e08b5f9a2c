"""Every notebook executes top to bottom in fast mode (MKV_FAST=1), as CI and `make notebooks` run it, with the data
folder when there is one; notebooks 04 and 06, whose live parts need benchmark files, also without one."""
import pytest

from mkvlib.notebooks import execute, notebook_paths

from conftest import data_folder_present

NOTEBOOKS = notebook_paths()
# Without benchmark files these render from the committed results and say how to get live runs; the others only
# change corpus (Python's documentation text), which CI checks by running `MKV_DATA_DIR= make notebooks`.
NEED_TASK_FILES = [p for p in NOTEBOOKS if p.name.startswith(("04_", "06_"))]
LIVE_HINT = "MKV_DATA_DIR=/path/to/data"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MKV_FAST", "1")
    seconds = execute(path, tmp_path)
    assert (tmp_path / path.name).exists()
    if path in NEED_TASK_FILES and not data_folder_present():
        assert LIVE_HINT in _stream_text(tmp_path / path.name)
    print(f"{path.name}: {seconds:.0f} s")


@pytest.mark.notebook
@pytest.mark.parametrize("path", NEED_TASK_FILES, ids=[p.stem for p in NEED_TASK_FILES])
def test_notebook_renders_from_committed_results_without_data(path, tmp_path, monkeypatch):
    if not data_folder_present():
        pytest.skip("no data folder here: test_notebook_executes_in_fast_mode already ran it without one")
    monkeypatch.setenv("MKV_FAST", "1")
    monkeypatch.setenv("MKV_DATA_DIR", "")          # empty: no data folder
    seconds = execute(path, tmp_path)
    assert LIVE_HINT in _stream_text(tmp_path / path.name)
    print(f"{path.name} without data: {seconds:.0f} s")


def _stream_text(path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name} has outputs in cells {dirty}: strip them before committing"
