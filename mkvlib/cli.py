"""The ``mkv`` command line (also ``python -m mkvlib``): thin wrappers over the functions the notebooks call.

Each subcommand lives in ``mkvlib/commands/<name>.py`` with ``register(subparsers)`` that adds its parser and
sets ``func``. Errors a user can fix print one clear line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# modules under mkvlib.commands, in --help order
COMMANDS = ["fit_pca", "eval", "train", "search", "lm_eval", "sft", "bench", "offline", "warmstart", "fullrun",
            "compare", "explore", "reproduce"]


# options several commands share, by name (:func:`add_options`)
OPTIONS = {
    "model": dict(default=None, help="Hugging Face id or folder (default: embedded SmolLM2-135M-Instruct)"),
    "device": dict(default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
    "json": dict(action="store_true", help="print one JSON object"),
    "debug": dict(action="store_true", help="show tracebacks"),
    "seed": dict(type=int, default=0),
    "adapter": dict(default=None, metavar="BUNDLE", help="a fine-tuned model: the `mkv sft` bundle whose adapter is "
                    "merged into --model first; '--projections bundle' then names the bundle's own projections"),
    "schedule": dict(default=None, help="comma-separated ranks to sample (default d/8, 2d/8, ..., d); e.g. 24,32,40 "
                     "concentrates training near a 50%% budget of d=64"),
}


def add_options(p, *names: str, **helps: str) -> None:
    """Add ``names`` then the other keys of ``helps`` as options (``dry_run`` is --dry-run): those of
    :data:`OPTIONS` as defined there, any other a switch (a store_true option); ``helps`` gives or replaces help."""
    for name in dict.fromkeys(names + tuple(helps)):
        spec = dict(OPTIONS.get(name, {"action": "store_true"}))
        if name in helps:
            spec["help"] = helps[name]
        p.add_argument("--" + name.replace("_", "-"), **spec)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mkv", description="MatryoshkaKV workbench: KV-cache compression by "
                                     "trainable orthogonal projections.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mkvlib.commands.{name}").register(sub)
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, KeyError, RuntimeError)
NETWORK_HINT = ("work from local files with MKV_DATA_DIR=/path/to/data (make, notebooks and mkv all read it), or "
                "retry with network access")


def network_error(err: BaseException) -> bool:
    """A failure to reach the network (the Hugging Face Hub), as the Hub, datasets, requests or httpx raise it."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return any(c.__module__.split(".")[0] in ("requests", "urllib3", "httpx", "httpcore")
               for c in type(err).__mro__)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mkv: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - user-fixable errors become one clear message, others propagate
        if getattr(args, "debug", False) or not (isinstance(err, USER_ERRORS) or network_error(err)):
            raise
        message = str(err).strip().splitlines()[0] if network_error(err) else err
        hint = f" ({NETWORK_HINT})" if network_error(err) else ""
        print(f"mkv {args.command}: error: {message}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
