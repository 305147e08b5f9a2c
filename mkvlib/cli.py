"""The ``mkv`` command line (also ``python -m mkvlib``): thin wrappers over the functions the notebooks call.

Each subcommand lives in ``mkvlib/commands/<name>.py`` with ``register(subparsers)`` that adds its parser and
sets ``func``. Errors a user can fix print one clear line and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["fit_pca", "eval", "train", "search", "lm_eval", "sft", "bench"]  # modules under mkvlib.commands, in --help order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mkv", description="MatryoshkaKV workbench: KV-cache compression by "
                                     "trainable orthogonal projections.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"mkvlib.commands.{name}").register(sub)
    return parser


USER_ERRORS = (ValueError, FileNotFoundError, KeyError, RuntimeError)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mkv: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if getattr(args, "debug", False):
            raise
        print(f"mkv {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
