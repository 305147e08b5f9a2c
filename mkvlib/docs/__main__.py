"""`python -m mkvlib.docs [--check | --write] [--root DIR]`: regenerate, or check, the documents made from data/."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.env import project_dir
from .build import check, write


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mkvlib.docs", description=__doc__.split(": ", 1)[1])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 (with a diff) if any document disagrees with data/")
    mode.add_argument("--write", action="store_true", help="rewrite the documents that disagree (the default)")
    parser.add_argument("--root", type=Path, default=None, help="the checkout (default: this project's)")
    args = parser.parse_args(argv)
    root = args.root or project_dir()
    try:
        stale = check(root) if args.check else {}
        for rel, diff in stale.items():
            print(f"{rel} disagrees with data/:\n{diff}\n", file=sys.stderr)
        if stale:
            print(f"{len(stale)} document(s) out of date: run `make docs` (python -m mkvlib.docs --write) and commit "
                  "them with the data they were made from", file=sys.stderr)
        for rel in [] if args.check else write(root):
            print(f"wrote {rel}")
        return 1 if stale else 0
    except KeyError as err:                 # a generated block names no table or fact, or its data is missing
        print(f"python -m mkvlib.docs: error: {err.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
