"""Documents generated from the committed data: docs/results.md, data/README.md, and numbers in README/docs.

    python -m mkvlib.docs --write    # make docs: rewrite what disagrees with data/
    python -m mkvlib.docs --check    # exit 1 with a diff when a document and the data disagree (tests/test_docs.py)

:mod:`.results` is the registry of tables (how to add one: its docstring), filled by :mod:`.ood`, :mod:`.accuracy`,
:mod:`.runs` and :mod:`.compare`; :mod:`.facts` holds single numbers for sentences, :mod:`.data_index` writes
data/README.md, :mod:`.records` reads what data/ records about itself, :mod:`.markdown` formats, :mod:`.build`
checks and writes.
"""
