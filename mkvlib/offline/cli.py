"""The command line of :mod:`mkvlib.offline`: ``mkv offline pack|unpack`` and ``python -m mkvlib.offline``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import add_options
from .base import DEFAULT_CHUNK_MB, DEFAULT_GROUP_MB, DEFAULT_PLATFORMS, DEFAULT_TARGET_HAS, DEFAULT_TEXTS, BundleError, log
from .pack import pack, pack_summary
from .target import Target, parse_freeze, parse_names
from .unpack import unpack


def add_subcommands(sub) -> None:
    """``pack`` and ``unpack`` parsers (shared by ``mkv offline`` and ``python -m mkvlib.offline``)."""
    p = sub.add_parser("pack", help="write a bundle for a machine without network (run here, online)",
                       description="Write the model's GGUF, wheels the target lacks and the run's text files, in "
                       "chunks grouped for size-limited transfers, with sha256 of everything.")
    p.add_argument("--out", required=True, help="bundle folder (outside the checkout, or git-ignored like .offline/)")
    p.add_argument("--chunk-mb", type=float, default=DEFAULT_CHUNK_MB,
                   help=f"split files larger than this many MiB (default {DEFAULT_CHUNK_MB:g})")
    p.add_argument("--group-mb", type=float, default=DEFAULT_GROUP_MB,
                   help=f"at most this many MiB per transfer group gNN/, manifest included "
                   f"(default {DEFAULT_GROUP_MB:g})")
    has = p.add_mutually_exclusive_group()
    has.add_argument("--target-freeze", metavar="FILE", help="`pip freeze` of the target's Python")
    has.add_argument("--target-has", metavar="PKGS", help="comma-separated distributions the target has (their "
                     f"dependencies count as present; default {DEFAULT_TARGET_HAS})")
    p.add_argument("--python-version", default="3.12", help="the target's Python (default 3.12)")
    p.add_argument("--platform", action="append", default=None,
                   help=f"the target's wheel platform tag, repeatable or comma-separated (default "
                   f"{','.join(DEFAULT_PLATFORMS)}; manylinux_2_N includes older glibc tags)")
    p.add_argument("--packages", default=None, help="requirements to bring, comma-separated (default: the "
                   "project's dependencies from pyproject.toml); 'none' for no wheels")
    p.add_argument("--texts", default=DEFAULT_TEXTS, help="data-folder files or folders (relative to MKV_DATA_DIR), "
                   "comma-separated; 'run' (default): what the corpora and local tasks read; 'none'")
    p.add_argument("--data-dir", default=None, help="the data folder (default MKV_DATA_DIR)")
    p.add_argument("--model", default=None, help="embedded (default), a .gguf file, a model folder, a Hugging Face "
                   "id in the local cache, or none")
    p.add_argument("--compress", default="xz", choices=("xz", "none"), help="compress text files (default xz)")
    add_options(p, "debug", json="print the manifest as JSON")
    p.set_defaults(func=run_pack)

    u = sub.add_parser("unpack", help="check, join and install a bundle (run on the target, offline)",
                       description="Check every piece's sha256, join the chunks atomically, install the wheels "
                       "offline into FOLDER/site (or the active environment) and print the environment to use.")
    u.add_argument("bundle", metavar="DIR", help="the bundle folder (manifest.json and gNN/ folders)")
    u.add_argument("--into", metavar="FOLDER", default=None, help="where to unpack (default DIR/unpacked)")
    add_options(u, "debug", into_env="install the wheels into the running Python's environment instead of "
                "FOLDER/site", check="only check that every piece is present and intact",
                json="print the result as JSON")
    u.set_defaults(func=run_unpack)


def target_from_args(args) -> Target:
    platforms = tuple(p.strip() for arg in (args.platform or [",".join(DEFAULT_PLATFORMS)])
                      for p in arg.split(",") if p.strip())
    if args.target_freeze:
        path = Path(args.target_freeze)
        if not path.is_file():
            raise BundleError(f"--target-freeze {path}: no such file")
        return Target(args.python_version, platforms, parse_freeze(path.read_text()), complete=True)
    return Target(args.python_version, platforms, parse_names(args.target_has or DEFAULT_TARGET_HAS))


def run_pack(args) -> int:
    requirements = None
    if args.packages is not None:
        requirements = [] if args.packages.strip() == "none" else \
            [r.strip() for r in args.packages.split(",") if r.strip()]
    manifest = pack(args.out, chunk_mb=args.chunk_mb, group_mb=args.group_mb, target=target_from_args(args),
                    requirements=requirements, texts=args.texts, data_dir=args.data_dir, model=args.model,
                    compress=args.compress)
    print(json.dumps(manifest, indent=1) if args.json else pack_summary(manifest, Path(args.out)))
    return 0


def run_unpack(args) -> int:
    result = unpack(args.bundle, into=args.into, into_env=args.into_env, check_only=args.check)
    if args.json:
        print(json.dumps(result, indent=1))
    elif args.check:
        print(f"bundle {result['bundle_id']}: all {result['checked_pieces']} pieces present and intact")
    else:
        log(f"bundle {result['bundle_id']}: {result['checked_pieces']} pieces checked, {result['joined']} files "
            f"joined ({result['already_there']} already there), {result['wheels']}; {result['unpack_s']} s")
        if result["model"]:
            log(f"model: --model {result['model']}")
        log(f"environment (also in {result['env_file']}):")
        print("\n".join(result["env_lines"]))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mkvlib.offline",
                                     description=sys.modules[__package__].__doc__.split("\n\n")[0])
    add_subcommands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (BundleError, OSError, ValueError) as err:
        if args.debug:
            raise
        print(f"mkv offline {args.command}: error: {err}", file=sys.stderr)
        return 2
