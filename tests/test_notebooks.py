"""Every notebook executes top to bottom in fast mode (MKV_FAST=1), as CI and `make notebooks` run it, with the data
folder when there is one; notebooks 04 and 06, whose live parts need benchmark files, also without one."""
import re
import time

import pytest

from mkvlib.notebooks import execute, notebook_paths
from mkvlib.runtime import figures_dir

from conftest import data_folder_present

NOTEBOOKS = notebook_paths()
# Without benchmark files these render from the committed results and say how to get live runs; the others only
# change corpus (Python's documentation text), which CI checks by running `MKV_DATA_DIR= make notebooks`.
NEED_TASK_FILES = [p for p in NOTEBOOKS if p.name.startswith(("04_", "06_"))]
LIVE_HINT = "MKV_DATA_DIR=/path/to/data"
# a lesson speaks of the method, not of the project's history: no fingerprints, commits or issue numbers
HISTORY = re.compile(r"\b[0-9a-f]{16}\b|\bissue \d+\b|\b(?:git|commit) [0-9a-f]{7,}\b", re.I)
MARKDOWN_WORDS = 1850                              # "at most about 1,800 words" of prose per notebook


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_in_fast_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MKV_FAST", "1")
    start = time.time()
    seconds = execute(path, tmp_path)
    assert (tmp_path / path.name).exists()
    _check_outputs(path, tmp_path / path.name, start)
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
    start = time.time()
    seconds = execute(path, tmp_path)
    _check_outputs(path, tmp_path / path.name, start)
    assert LIVE_HINT in _stream_text(tmp_path / path.name)
    print(f"{path.name} without data: {seconds:.0f} s")


def _check_outputs(source, executed, since: float) -> None:
    """No cell of the executed notebook shows an error (an error output, or a traceback on stderr), and every figure
    it wrote under figures/ during the run is shown in the notebook: at least as many PNG outputs as fresh figure
    files named after the notebook, and at least one such file when the notebook saves figures."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    outputs = [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs]
    errors = [i for i, o in outputs if o.output_type == "error"
              or (o.output_type == "stream" and o.get("name") == "stderr" and "Traceback" in o.get("text", ""))]
    assert not errors, f"{source.name}: error output in cells {errors}"
    stderr = [i for i, o in outputs if o.output_type == "stream" and o.get("name") == "stderr"]
    assert not stderr, f"{source.name}: stderr output in cells {stderr}: fix the warning at its cause"
    shown = [i for i, o in outputs for m in HISTORY.finditer(str(o.get("text", "")) + str(o.get("data", "")))]
    assert not shown, f"{source.name}: fingerprints, commits or issue numbers in the output of cells {shown}"
    pngs = sum(1 for _, o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data)
    fresh = sorted(f.name for f in figures_dir().glob(f"{source.name[:2]}_*.png") if f.stat().st_mtime >= since - 1)
    code = "".join(c.source for c in nb.cells if c.cell_type == "code")
    if "save_figure(" in code or "show_figure(" in code:
        assert fresh, f"{source.name} saves figures but wrote none under {figures_dir()} during the run"
    assert pngs >= len(fresh), f"{source.name} wrote {fresh} but shows only {pngs} PNG outputs"


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


def test_notebooks_read_as_lessons():
    import nbformat

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        words = sum(len(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
        assert words <= MARKDOWN_WORDS, f"{path.name}: {words} words of Markdown (at most about 1,800)"
        history = [m.group() for c in nb.cells for m in HISTORY.finditer(c.source)]
        assert not history, f"{path.name} names {history}: a lesson names recipes, not fingerprints or commits"
        asserts = max((c.source.count("assert ") for c in nb.cells if c.cell_type == "code"), default=0)
        assert asserts <= 5, f"{path.name}: a cell with {asserts} asserts (checks on committed data go to tests/)"


def test_output_check_catches_errors_and_figures_not_shown(tmp_path, monkeypatch):
    import sys

    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    monkeypatch.setattr(sys.modules[__name__], "figures_dir", lambda: tmp_path)
    path = tmp_path / "98_check.ipynb"

    def check(cells, since=0.0):
        nbformat.write(new_notebook(cells=cells), path)
        _check_outputs(path, path, since)

    with pytest.raises(AssertionError, match="error output"):
        check([new_code_cell("1 / 0", outputs=[new_output("error", ename="ZeroDivisionError", evalue="",
                                                           traceback=[])])])
    with pytest.raises(AssertionError, match="error output"):
        check([new_code_cell("x", outputs=[new_output("stream", name="stderr",
                                                      text="Traceback (most recent call last):\n")])])
    with pytest.raises(AssertionError, match="stderr output"):
        check([new_code_cell("x", outputs=[new_output("stream", name="stderr", text="a warning\n")])])
    with pytest.raises(AssertionError, match="fingerprints"):
        check([new_code_cell("x", outputs=[new_output("stream", name="stdout", text="ac63cf12294c56a7\n")])])
    with pytest.raises(AssertionError, match="wrote none"):
        check([new_code_cell('show_figure(fig, "98_a")')], since=time.time())
    (tmp_path / "98_a.png").write_bytes(b"png")
    with pytest.raises(AssertionError, match="shows only 0 PNG"):
        check([new_code_cell('show_figure(fig, "98_a")')])
    shown = new_output("display_data", data={"image/png": "aGk=", "text/plain": "<Image>"})
    check([new_code_cell('show_figure(fig, "98_a")', outputs=[shown])])      # shown once: passes


def test_a_lost_kernel_message_reruns_the_notebook_once_in_fast_mode(tmp_path, monkeypatch, capsys):
    """A cell timeout (kernel and client both idle: a message lost under load) runs the notebook once more in fast
    mode, with the fast cell limit; a second timeout fails, and in full mode the first one does."""
    import nbclient
    from nbclient.exceptions import CellTimeoutError

    runs = []

    class Client:
        def __init__(self, nb, timeout, **kw):
            runs.append(timeout)

        def execute(self):
            if len(runs) <= fails:
                raise CellTimeoutError("Cell execution timed out")

    monkeypatch.setattr(nbclient, "NotebookClient", Client)
    monkeypatch.setenv("MKV_FAST", "1")
    fails = 1
    execute(NOTEBOOKS[0], tmp_path)
    assert runs == [600, 600] and "running it once more" in capsys.readouterr().out
    assert (tmp_path / NOTEBOOKS[0].name).exists()
    runs.clear()
    fails = 2
    with pytest.raises(CellTimeoutError):
        execute(NOTEBOOKS[0], tmp_path)
    assert runs == [600, 600]
    runs.clear()
    monkeypatch.setenv("MKV_FAST", "0")
    with pytest.raises(CellTimeoutError):
        execute(NOTEBOOKS[0], tmp_path, timeout=30)
    assert runs == [30]
