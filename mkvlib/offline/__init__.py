"""An offline bundle for a machine without network: the model, the wheels the target Python lacks, and the text
a run needs, in pieces small enough for size-limited transfers, with hashes of everything.

``pack`` (here, online) writes into a folder::

    manifest.json              what every piece is: sha256 and size of each whole file and each piece, groups
    g01/ g02/ ...              the transfer groups, each at most --group-mb with its own copy of manifest.json
      model/<name>.gguf[.partNNN]     the model's GGUF (the embedded one by default), split at --chunk-mb
      wheels/<wheel>[.partNNN]        wheels for the target's Python and platform
      data/<relative path>.xz[.partNNN]  data-folder text files (MKV_DATA_DIR layout), xz-compressed

``unpack`` (on the target, offline; standard library and pip only) checks every hash before it writes anything,
joins the pieces atomically, installs the wheels into a local folder (or the active environment), and prints the
environment lines to use. Run it as ``mkv offline unpack DIR`` or ``python -m mkvlib.offline unpack DIR`` from
the checkout. Each group folder can travel in a separate transfer; unpack names any piece that is missing or
corrupt, and the group that brings it.

Wheels: the packages to bring are the project's runtime requirements (``pyproject.toml``) minus what the target
has (a ``pip freeze`` of it, or names, whose own dependencies then count as present too); pip resolves their
closure for the target's Python and platform without installing (``pip install --dry-run --report``), packages
published only as source are built here into pure-Python wheels, and torch, triton and nvidia-* never travel.

Modules: ``base`` (format, errors, names), ``pieces`` (chunks, groups, hashes, joining, xz), ``target`` (what the
target has, its Python and platforms), ``resolve`` (pip for the target), ``wheels`` (which wheels travel),
``sources`` (texts and model files), ``pack``, ``unpack``, ``cli`` (``python -m mkvlib.offline``).
"""
from ..io import file_sha256
from .base import (DEFAULT_CHUNK_MB, DEFAULT_GROUP_MB, DEFAULT_PLATFORMS, DEFAULT_TARGET_HAS, DEFAULT_TEXTS, FORMAT,
                   MANIFEST, MIB, NEVER_DOWNLOAD, VERSION, BundleError, Unresolvable, canonical, log, mib,
                   never_download, replace_dir, repo_root)
from .cli import add_subcommands, main, run_pack, run_unpack, target_from_args
from .pack import check_out_dir, pack, pack_summary
from .pieces import (XZ_PRESET, assign_groups, check_pieces, chunk_ranges, compress_xz, compressed_copy, copy_range,
                     group_name, join_file, piece_names)
from .resolve import (STUB, pip, pip_build_wheel, pip_download, pip_resolve, stub_versions, stub_wheel,
                      stubbed_with_extras, unresolvable_requirements)
from .sources import model_files, run_texts, text_files
from .target import Target, expand_platforms, parse_freeze, parse_names, project_requirements
from .unpack import _unzip_wheel, install_wheels, read_manifest, unpack  # noqa: F401 - _unzip_wheel: tests
from .wheels import WheelPlan, fetch_wheels, plan_wheels, resolve_wheels

sha256_file = file_sha256   # the name this module has always used

__all__ = ["add_subcommands", "assign_groups", "BundleError", "canonical", "check_out_dir",
           "check_pieces", "chunk_ranges", "compress_xz", "compressed_copy", "copy_range", "DEFAULT_CHUNK_MB",
           "DEFAULT_GROUP_MB", "DEFAULT_PLATFORMS", "DEFAULT_TARGET_HAS", "DEFAULT_TEXTS", "expand_platforms",
           "fetch_wheels", "file_sha256", "FORMAT", "group_name", "install_wheels", "join_file", "log", "main",
           "MANIFEST", "MIB", "mib", "model_files", "NEVER_DOWNLOAD", "never_download", "pack", "pack_summary",
           "parse_freeze", "parse_names", "piece_names", "pip", "pip_build_wheel", "pip_download", "pip_resolve",
           "plan_wheels", "project_requirements", "read_manifest", "replace_dir", "repo_root", "resolve_wheels",
           "run_pack", "run_texts", "run_unpack", "sha256_file", "STUB", "stub_versions", "stub_wheel",
           "stubbed_with_extras", "Target", "target_from_args", "text_files", "unpack", "Unresolvable",
           "unresolvable_requirements", "VERSION", "WheelPlan", "XZ_PRESET"]
