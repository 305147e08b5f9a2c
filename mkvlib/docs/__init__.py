"""Documents generated from the committed data: docs/results.md, data/README.md, and numbers in README/docs.

    python -m mkvlib.docs --write    # make docs: rewrite what disagrees with data/
    python -m mkvlib.docs --check    # exit 1 with a diff when a document and the data disagree (tests/test_docs.py)

A new table is one function in a section module (:mod:`.ood`, :mod:`.accuracy`, :mod:`.runs`, :mod:`.compare`),
registered with :func:`.results.section`; it appears in docs/results.md in the order registered and README.md can
embed it between ``<!-- generated: NAME -->`` and ``<!-- /generated -->``::

    @section("ood-suite", "Out-of-domain perplexity and KL", result="ood_suite.json")
    def ood_suite(data: Data, path, rec) -> str:      # left out while data/results/ood_suite.json is absent
        return paragraphs(prose("ood-suite", rec), table(headers, rows))   # framed by its source and command

Further glob patterns under ``data/`` name other files it reads; a results file no section reads is listed under
"Other result files". Fixed text lives in prose.md (:func:`.results.prose`); sort rows explicitly, so that the same
data gives the same bytes. A number quoted in a sentence is a fact (:mod:`.facts`). Then ``make docs``.
"""
