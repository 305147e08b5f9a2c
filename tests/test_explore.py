"""mkv explore: its arguments (no server started) and the page's notebook executed headless.

A browser opening the served page and driving it is tests/test_browser.py (``make browser-test``).
"""
import importlib.util
import socket

import pytest

from mkvlib.cli import build_parser, main
from mkvlib.commands import explore


def test_explore_is_an_mkv_command():
    args = build_parser().parse_args(["explore", "--port", "0", "--no-browser"])
    assert args.func is explore.run and args.port == 0 and args.no_browser and args.host == "127.0.0.1"
    assert build_parser().parse_args(["explore"]).port == explore.DEFAULT_PORT


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port must lie between 1 and 65535 (0: any free port), not 70000"),
    (["--port", "-1"], "--port must lie between"),
    (["--notebook", "no/such/page.ipynb"], "no notebook at no/such/page.ipynb"),
    (["--notebook", "README.md"], "--notebook must be a .ipynb file, not 'README.md'"),
])
def test_bad_input_is_one_clear_line(argv, message, capsys):
    assert main(["explore", "--no-browser", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mkv explore: error: ") and message in err and err.count("\n") == 1


def test_a_port_in_use_is_refused_before_anything_starts(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["explore", "--no-browser", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in err and "pick another --port" in err


def test_port_zero_picks_a_free_port():
    port = explore.check_port("127.0.0.1", 0)
    assert 0 < port <= 65535


def test_without_voila_the_error_names_the_extra(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "voila" else real(name, *a))
    assert main(["explore", "--no-browser", "--port", "0"]) == 2
    assert "pip install -e '.[explore]'" in capsys.readouterr().err


def test_the_page_is_served_by_voila_without_sources(monkeypatch, capsys, tmp_path):
    pytest.importorskip("voila")
    started = {}

    class Server:                                   # stands in for the Voila process
        def __init__(self, command, cwd):
            started.update(command=command, cwd=cwd)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(explore.subprocess, "Popen", Server)
    assert main(["explore", "--no-browser", "--port", "0"]) == 0
    command = started["command"]
    port = int(next(a for a in command if a.startswith("--port=")).split("=")[1])
    assert command[1:4] == ["-m", "voila", str(explore.explorer_notebook().resolve())]
    assert {"--Voila.ip=127.0.0.1", "--strip_sources=True", "--show_tracebacks=False", "--no-browser"} <= set(command)
    assert started["cwd"] == explore.explorer_notebook().resolve().parent
    assert f"at http://127.0.0.1:{port}/" in capsys.readouterr().out
    assert "--no-browser" not in explore.voila_command(explore.explorer_notebook(), "0.0.0.0", 8866, True)
    assert explore.page_url("0.0.0.0", 8866) == "http://127.0.0.1:8866/"


@pytest.mark.slow
@pytest.mark.notebook
def test_the_explorer_page_runs_headless_and_opens_on_trained_adaptive_half(tmp_path):
    """The page's notebook executed as Voila executes it: no error, one widget shown, and the widget state saved
    with it opens on the trained projections, adaptive ranks, 50%."""
    import nbformat

    from mkvlib.notebooks import execute

    execute(explore.explorer_notebook(), tmp_path)
    nb = nbformat.read(tmp_path / "explorer.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error" or o.get("name") == "stderr"], outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    models = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"].values()
    assert "FloatProgressModel" not in {m["model_name"] for m in models}, "a loading bar left on the page"
    states = [m["state"] for m in models]
    by_description = {s.get("description"): s for s in states if s.get("description")}
    assert by_description["projections"]["index"] == by_description["projections"]["_options_labels"].index("trained")
    assert by_description["allocation"]["_options_labels"][by_description["allocation"]["index"]] == "adaptive"
    assert by_description["budget"]["value"] == 0.5 and by_description["budget %"]["value"] == 50.0
    assert not by_description["generate"]["disabled"]
