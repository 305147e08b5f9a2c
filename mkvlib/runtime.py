"""Run-time switches shared by every notebook and command: device and dtype, seeds, the run and figure folders, and
whether the Hugging Face Hub is reachable. Fast mode and the project's folder are :mod:`mkvlib.core.env`'s.

Introduced in notebook 01; every later notebook starts with the same three calls. Importing ``mkvlib`` calls
:func:`ensure_hub_reachable_or_offline`, so torch and NumPy are imported only where they are used.
"""
from __future__ import annotations

import os
import random
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from .core.env import _TRUE, fast_mode, project_dir

HUB_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_NOTED: set = set()


def note(message: str) -> None:
    """Print an announcement (not an error): on stderr in a command, where it stays out of piped output; on stdout
    in a notebook kernel, where stderr would render as a warning box around a plain remark."""
    print(message, file=sys.stdout if in_notebook_kernel() else sys.stderr, flush=True)


def in_notebook_kernel() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell), not a command or a test run."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def note_once(key: str, message: str) -> None:
    """:func:`note` ``message`` the first time ``key`` is noted in this process."""
    if key not in _NOTED:
        _NOTED.add(key)
        note(message)


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` asks Hugging Face libraries to stay offline."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in HUB_VARIABLES)


def _hub_address() -> tuple[str, int]:
    """Host and port a Hub request would connect to first: the HTTPS proxy if one is set, else ``HF_ENDPOINT``
    (default https://huggingface.co)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy else os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    if not url.hostname:                        # a proxy given as host:port, without a scheme
        url = urlparse("//" + (proxy or ""))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


_PROBED: dict = {}


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether a TCP connection to the Hub (or the HTTPS proxy) opens within ``timeout`` seconds, name lookup
    included; probed once per process and address."""
    import socket

    address = _hub_address()
    if address not in _PROBED:
        result = []

        def probe():
            try:
                socket.create_connection(address, timeout=timeout).close()
                result.append(True)
            except Exception:  # noqa: BLE001 - whatever stops the connection means "unreachable"
                result.append(False)

        worker = threading.Thread(target=probe, daemon=True)   # a stuck name lookup ignores socket time-outs
        worker.start()
        worker.join(timeout + 0.25)
        _PROBED[address] = bool(result and result[0])
    return _PROBED[address]


def ensure_hub_reachable_or_offline(timeout: float = 1.5) -> bool:
    """Work offline at once when the Hugging Face Hub cannot be reached, instead of retrying for a minute.

    When neither ``HF_HUB_OFFLINE`` nor ``HF_DATASETS_OFFLINE`` is set, probe the Hub once (a socket connection,
    ``timeout`` seconds) and, if it is unreachable, set both to 1 and print one line on stderr. Must run before
    ``huggingface_hub`` or ``datasets`` is imported (they read the variables then); ``import mkvlib`` calls it, and
    processes started from this one (notebook kernels) inherit the result. Returns True when online use is allowed.
    """
    if any(os.environ.get(v, "").strip() for v in HUB_VARIABLES):
        return not hub_offline()                # the user's choice (or a parent process's probe) stands
    if hub_reachable(timeout):
        return True
    for var in HUB_VARIABLES:
        os.environ[var] = "1"
    host, port = _hub_address()
    note_once("hub-offline", f"mkvlib: {host}:{port} is unreachable, so Hugging Face works offline "
                             "(HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1)")
    return False


def pick(fast, full):
    """Return ``fast`` in fast mode, ``full`` otherwise: the one switch every size parameter goes through."""
    return fast if fast_mode() else full


def device_and_dtype(device: str | torch.device | None = None, dtype: torch.dtype | str | None = None):
    """The one place that picks where and how models run.

    CUDA when present (bfloat16), otherwise CPU (float32). ``MKV_DEVICE`` and ``MKV_DTYPE`` override.
    """
    import torch

    device = device or os.environ.get("MKV_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    dtype = dtype or os.environ.get("MKV_DTYPE")
    if isinstance(dtype, str):
        try:
            dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                     "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_dir() -> Path:
    """Where converted models and other rebuildable artefacts live (``MKV_CACHE_DIR``, default ~/.cache/mkvlib)."""
    path = Path(os.environ.get("MKV_CACHE_DIR") or Path.home() / ".cache" / "mkvlib")
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """Where full-mode notebooks write by default: ``runs/`` in the checkout (git-ignored), so that nothing lands
    in ``data/`` unless asked for. Not created here: the writers create the folders they write into."""
    return project_dir() / "runs"


def figures_dir() -> Path:
    """Figures go to ``figures/`` (full runs) or ``figures/fast/`` (fast mode, not committed)."""
    path = project_dir() / "figures"
    if fast_mode():
        path = path / "fast"
    path.mkdir(parents=True, exist_ok=True)
    return path
