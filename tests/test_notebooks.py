"""Every notebook executes top to bottom in fast mode (MKV_FAST=1), as CI and `make notebooks` run it."""
import os

import pytest

from mkvlib.notebooks import execute, notebook_paths

NOTEBOOKS = notebook_paths()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MKV_FAST", "1")
    seconds = execute(path, tmp_path)
    assert (tmp_path / path.name).exists()
    print(f"{path.name}: {seconds:.0f} s")


def test_notebooks_are_committed_without_outputs():
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name} has outputs in cells {dirty}: strip them before committing"
