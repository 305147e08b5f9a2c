"""Documents generated from the committed data: docs/results.md, data/README.md, and numbers in README/docs.

    python -m mkvlib.docs --write    # make docs: rewrite what disagrees with data/
    python -m mkvlib.docs --check    # exit 1 with a diff when a document and the data disagree (tests/test_docs.py)

- :mod:`.results`: one function per measured table, in a registry (how to add a results source: its docstring)
- :mod:`.facts`: single numbers for sentences (inline generated blocks)
- :mod:`.data_index`: data/README.md, what each artefact is, how it was made and what it measured
- :mod:`.records`: what the files under data/ record about themselves (fingerprints, commands, digests)
- :mod:`.markdown`: tables, number formats, the ``<!-- generated: NAME -->`` marker blocks
- :mod:`.build`: which files are generated, :func:`check` and :func:`write`
"""
from .build import check, expected, render_block, render_results, write
from .markdown import fill_blocks
from .records import Data

__all__ = ["Data", "check", "expected", "fill_blocks", "render_block", "render_results", "write"]
