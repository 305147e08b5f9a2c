"""mkv offline pack / unpack: a bundle of the model, wheels and text for a machine without network
(see :mod:`mkvlib.offline`; on the target, ``python -m mkvlib.offline unpack DIR`` needs no installed mkv)."""
from __future__ import annotations


def register(sub) -> None:
    from ..offline.cli import add_subcommands

    p = sub.add_parser("offline", help="bundle the model, wheels and data for an air-gapped machine, and unpack it",
                       description="pack: write a bundle (here, online); unpack: check, join and install it on the "
                       "target (offline). Each gNN/ folder of a bundle fits one size-limited transfer.")
    add_subcommands(p.add_subparsers(dest="offline_command", required=True, metavar="ACTION"))
