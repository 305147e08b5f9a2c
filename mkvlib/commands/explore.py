"""mkv explore: the budget explorer as a standalone page for live demos.

Voila serves notebooks/explorer.ipynb as a page without code cells: the explorer of notebook 03
(:func:`mkvlib.widgets.shipped_explorer`), opening on the shipped trained projections, adaptive ranks and a 50%
budget, with *generate* continuing a prompt with the compressed embedded model. Voila comes with the ``explore``
extra (``pip install -e '.[explore]'``; ``make browser-test`` installs it too).
"""
from __future__ import annotations

import importlib.util
import signal
import socket
import subprocess
import sys
from pathlib import Path

from ..core.env import project_dir

DEFAULT_PORT = 8866


def explorer_notebook() -> Path:
    """The page's notebook: notebooks/explorer.ipynb in the checkout."""
    return project_dir() / "notebooks" / "explorer.ipynb"


def register(sub) -> None:
    p = sub.add_parser("explore", help="serve the budget explorer as a standalone page (Voila) for live demos: "
                       "trained projections, adaptive ranks, 50%% to start")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to serve on (default {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 lets other machines "
                   "in, with no password)")
    p.add_argument("--no-browser", action="store_true", help="only serve the page; do not open a web browser")
    p.add_argument("--notebook", default=None, help="the notebook to serve (default: notebooks/explorer.ipynb)")
    p.set_defaults(func=run)


def check_port(host: str, port: int) -> int:
    """``port`` when it is free on ``host`` (0: a free port picked here); a clear error when it is taken."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must lie between 1 and 65535 (0: any free port), not {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(f"cannot serve on {host}:{port} ({err.strerror or err}): pick another --port, or "
                             "another --host") from None
        return probe.getsockname()[1]


def page_url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"http://{shown}:{port}/"


def voila_command(notebook: Path, host: str, port: int, open_browser: bool) -> list[str]:
    """The command that serves ``notebook`` with Voila, sources stripped and tracebacks kept out of the page."""
    return [sys.executable, "-m", "voila", str(notebook), f"--port={port}", f"--Voila.ip={host}",
            "--strip_sources=True", "--show_tracebacks=False", *([] if open_browser else ["--no-browser"])]


def check_args(args) -> tuple[Path, int]:
    """(notebook, port) after refusing what cannot work, before anything starts."""
    notebook = Path(args.notebook) if args.notebook else explorer_notebook()
    if notebook.suffix != ".ipynb":
        raise ValueError(f"--notebook must be a .ipynb file, not {str(notebook)!r}")
    if not notebook.is_file():
        raise FileNotFoundError(f"no notebook at {notebook}")
    port = check_port(args.host, args.port)
    if importlib.util.find_spec("voila") is None:
        raise RuntimeError(f"mkv explore serves the page with Voila, which is not installed in {sys.prefix}: "
                           f"{sys.executable} -m pip install -e '.[explore]' (or `make browser-test`, which "
                           "installs it)")
    return notebook.resolve(), port


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args) -> int:
    notebook, port = check_args(args)
    command = voila_command(notebook, args.host, port, not args.no_browser)
    print(f"mkv explore: serving {notebook.name} at {page_url(args.host, port)} (Ctrl+C stops it; the page takes "
          "a few seconds to load the model when it opens)", flush=True)
    server = subprocess.Popen(command, cwd=notebook.parent)
    signal.signal(signal.SIGTERM, _interrupt)          # a terminated mkv explore stops Voila and its kernels too
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        raise
