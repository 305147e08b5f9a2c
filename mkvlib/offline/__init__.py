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
"""
