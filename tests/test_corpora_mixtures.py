"""Training files by name with held-out slices, weighted mixtures, and the rule that held-out text never reaches
training or calibration."""
import json
import os
from pathlib import Path

import pytest
import torch

from mkvlib import corpora
from mkvlib.cli import main


class CharTok:
    """One token per character (its code point)."""

    def __call__(self, text, **kw):
        return {"input_ids": [ord(c) for c in text]}


def write_training_dir(root: Path, n_docs: dict | None = None) -> dict:
    """A fake data folder with the five training/ files: doc i of NAME is 'NAME doc i ...' (300 characters)."""
    n_docs = n_docs or {name: 40 for name in corpora.TRAINING_FILES}
    (root / "training").mkdir(parents=True)
    docs = {}
    for name, rel in corpora.TRAINING_FILES.items():
        docs[name] = [f"{name} doc {i:03d} " + "lorem ipsum " * 24 for i in range(n_docs[name])]
        (root / rel).write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs[name])))
    return docs


# --- names and held-out parts --------------------------------------------------------------------------------

def test_training_names_split_documents_in_file_order(tmp_path, monkeypatch):
    docs = write_training_dir(tmp_path, {"books": 43, "stackexchange": 3186 // 20, "factbook": 3, "peps": 2,
                                         "rfcs": 40})
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    assert corpora.load_text("books") == "\n\n".join(docs["books"][:-2])            # 5% of 43 -> 2 documents
    assert corpora.load_text("books-heldout") == "\n\n".join(docs["books"][-2:])
    assert corpora.load_text("gutenberg_books") == corpora.load_text("books")
    assert corpora.load_text("factbook-heldout") == docs["factbook"][-1]             # at least one document
    assert corpora.load_text("peps") == docs["peps"][0]
    assert corpora.load_text("rfcs-heldout") == "\n\n".join(docs["rfcs"][-2:])
    assert corpora.load_text("books-train") == corpora.load_text("books")


def test_documents_are_parsed_once_per_process(tmp_path, monkeypatch):
    write_training_dir(tmp_path)
    path = tmp_path / corpora.TRAINING_FILES["peps"]
    first = corpora.read_documents(path)
    calls = []
    monkeypatch.setattr(corpora, "_parse_jsonl", lambda *a: calls.append(a) or ())
    assert corpora.read_documents(path) is first and not calls
    path.write_text(json.dumps({"text": "changed"}) + "\n")     # a changed file is read again
    corpora.read_documents(path)
    assert calls


def test_training_name_without_data_dir_says_what_to_do(monkeypatch):
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    with pytest.raises(corpora.CorpusNotFoundError, match="MKV_DATA_DIR"):
        corpora.load_text("books-heldout")


def test_default_calibration_corpus_is_the_diverse_mixture(tmp_path, monkeypatch):
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    (tmp_path / "wikitext2").mkdir()
    assert corpora.default_corpus("calibration") == "wikitext2-validation"
    write_training_dir(tmp_path)
    assert corpora.default_corpus("calibration") == corpora.DEFAULT_TRAINING_MIXTURE
    assert corpora.default_corpus("eval") == "wikitext2-test"
    names = [n for n, _ in corpora.parse_mixture(corpora.DEFAULT_TRAINING_MIXTURE)]
    assert len(names) >= 5 and corpora.check_not_heldout(corpora.DEFAULT_TRAINING_MIXTURE)


# --- mixtures ------------------------------------------------------------------------------------------------

def test_parse_mixture_weights_and_aliases():
    assert corpora.parse_mixture("books:2,stackexchange:1,peps") == [("books", 2.0), ("stackexchange", 1.0),
                                                                    ("peps", 1.0)]
    assert corpora.parse_mixture(" Gutenberg_Books : 0.5 , wikitext2-val") == [("books", 0.5),
                                                                              ("wikitext2-validation", 1.0)]
    assert corpora.parse_mixture("c4") == [("c4", 1.0)]


@pytest.mark.parametrize("spec, error, match", [
    ("", ValueError, "empty corpus mixture"),
    ("  ", ValueError, "empty corpus mixture"),
    ("books,,peps", ValueError, "empty entry"),
    ("books,", ValueError, "empty entry"),
    ("books:two", ValueError, "'two' of 'books' .* is not a number"),
    ("books:0", ValueError, "must be a finite number > 0"),
    ("books:-1,peps", ValueError, "must be a finite number > 0"),
    ("books:inf", ValueError, "must be a finite number > 0"),
    (":2", ValueError, "no corpus name"),
    ("books,gutenberg:2", ValueError, "'books' appears twice"),
    ("books,novels:2", corpora.CorpusNotFoundError, r"unknown corpus 'novels' in the mixture.*'stackexchange'"),
])
def test_parse_mixture_errors(spec, error, match):
    with pytest.raises(error, match=match):
        corpora.parse_mixture(spec)


def test_apportion_is_proportional_and_exact():
    assert corpora.apportion(12, [2, 1, 1]) == [6, 3, 3]
    assert corpora.apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert corpora.apportion(2, [1, 1, 1, 1]) == [1, 1, 0, 0]
    assert sum(corpora.apportion(97, [0.3, 2.5, 1, 7])) == 97


def letter_files(tmp_path, letters="abc", n=4000):
    paths = {}
    for ch in letters:
        paths[ch] = tmp_path / f"{ch}.txt"
        paths[ch].write_text(ch * n)
    return paths


def test_mixture_blocks_proportions_and_seeded_shuffle(tmp_path):
    p = letter_files(tmp_path)
    spec = f"{p['a']}:3,{p['b']}:1,{p['c']}:2"
    blocks = corpora.mixture_blocks(CharTok(), spec, 10, 120, seed=0)
    assert blocks.shape == (12, 10) and blocks.dtype == torch.long
    firsts = [chr(int(b[0])) for b in blocks]
    assert (firsts.count("a"), firsts.count("b"), firsts.count("c")) == (6, 2, 4)
    assert all(len(set(b.tolist())) == 1 for b in blocks)        # whole blocks from one corpus each
    again = corpora.mixture_blocks(CharTok(), spec, 10, 120, seed=0)
    other = corpora.mixture_blocks(CharTok(), spec, 10, 120, seed=1)
    assert torch.equal(blocks, again)
    assert not torch.equal(blocks, other)
    assert sorted(map(tuple, other.tolist())) == sorted(map(tuple, blocks.tolist()))
    # token_blocks takes a mixture spec transparently, and needs a token count for it
    assert torch.equal(corpora.token_blocks(CharTok(), spec, 10, 120), blocks)
    with pytest.raises(ValueError, match="needs a token count"):
        corpora.token_blocks(CharTok(), spec, 10)


def test_mixture_skip_tokens_takes_disjoint_slices(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("".join(chr(0x4E00 + i) for i in range(400)))
    b.write_text("".join(chr(0x5E00 + i) for i in range(400)))
    spec = f"{a},{b}:1"
    first = corpora.mixture_blocks(CharTok(), spec, 10, 80)
    second = corpora.mixture_blocks(CharTok(), spec, 10, 80, skip_tokens=80)
    assert not set(first.flatten().tolist()) & set(second.flatten().tolist())
    assert len(second) == 8


def test_short_corpus_in_a_mixture_gives_what_it_has(tmp_path, capsys):
    p = letter_files(tmp_path, "ab", n=25)
    big = tmp_path / "big.txt"
    big.write_text("z" * 1000)
    blocks = corpora.mixture_blocks(CharTok(), f"{p['a']},{big}", 10, 100)
    assert len(blocks) == 7 and "had 2 of the 5 blocks" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fewer than one block"):
        corpora.mixture_blocks(CharTok(), f"{p['a']}", 10, 5)


def test_long_blocks(tmp_path):
    p = tmp_path / "long.txt"
    p.write_text("x" * 20000)
    assert corpora.token_blocks(CharTok(), f"{p}:1", 8192, 16384).shape == (2, 8192)


# --- held-out text never reaches training or calibration --------------------------------------------------

HELD_OUT_SPECS = corpora.heldout_corpora() + ["wikitext", "tinyshakespeare", "Books-Heldout",
                                               "books:2,stackexchange-heldout", "c4,pydoc-test:0.1",
                                               "books,rfcs-heldout"]


@pytest.mark.parametrize("spec", HELD_OUT_SPECS)
def test_check_not_heldout_refuses_every_evaluation_corpus(spec):
    with pytest.raises(corpora.HeldOutCorpusError, match="may not be used as training text"):
        corpora.check_not_heldout(spec)


def test_check_not_heldout_refuses_whole_files_and_benchmarks(tmp_path, monkeypatch):
    write_training_dir(tmp_path)
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    whole = str(tmp_path / corpora.TRAINING_FILES["books"])
    with pytest.raises(corpora.HeldOutCorpusError, match="use the name 'books'"):
        corpora.check_not_heldout(whole)
    with pytest.raises(corpora.HeldOutCorpusError, match="use the name 'peps'"):
        corpora.check_not_heldout(f"books,{tmp_path / corpora.TRAINING_FILES['peps']}:2")
    with pytest.raises(corpora.HeldOutCorpusError, match="benchmark"):
        corpora.check_not_heldout("/data/piqa/valid.jsonl")
    with pytest.raises(corpora.HeldOutCorpusError, match="evaluation corpus 'shakespeare'"):
        corpora.check_not_heldout("/elsewhere/calibration/tinyshakespeare/original/input.txt")
    for ok in ("books", "books:2,stackexchange,factbook,peps,rfcs", "wikitext2-validation", "c4", "pydoc",
               "arc_easy-validation"):
        assert corpora.check_not_heldout(ok) == ok


def test_every_training_entry_point_refuses_heldout(tmp_path):
    """mkv train, mkv search (and SearchConfig), mkv fit-pca: a clear error before any model loads."""
    from mkvlib.search import SearchConfig

    for spec in ("books-heldout", "c4,peps-heldout:2", "shakespeare"):
        with pytest.raises(corpora.HeldOutCorpusError):
            corpora.check_not_heldout(spec)
        with pytest.raises(corpora.HeldOutCorpusError, match="calibration text"):
            SearchConfig(corpus=spec)
    out = tmp_path / "x"
    small = ["--tokens", "128", "--seq-len", "64"]     # should a check go missing, the command stays short
    assert main(["train", "--corpus", "books", "--corpus", "rfcs-heldout", *small, "--steps", "1",
                 "--out", f"{out}.safetensors"]) == 2
    assert main(["search", "--corpus", "books:2,factbook-heldout", *small, "--out", f"{out}.json"]) == 2
    assert main(["fit-pca", "--corpus", "wikitext2-test", *small, "--out", f"{out}.safetensors"]) == 2
    assert not list(tmp_path.iterdir())


# --- on the shared data folder -----------------------------------------------------------------------------

def shared_training_dir():
    root = os.environ.get("MKV_DATA_DIR")
    if not root or not (Path(root) / "training").is_dir():
        pytest.skip("needs MKV_DATA_DIR with training/")
    return Path(root)


def test_shared_heldout_parts_are_disjoint_from_training_parts():
    """No held-out document of any training/ file occurs anywhere in that file's training text."""
    root = shared_training_dir()
    for name, rel in corpora.TRAINING_FILES.items():
        docs = corpora.read_documents(root / rel)
        train, held = corpora.load_text(name), corpora.split_documents(docs, "heldout")
        assert held == list(docs[-max(1, int(len(docs) * 0.05)):])
        assert corpora.load_text(f"{name}-heldout") == "\n\n".join(held)
        assert len(train) + len(corpora.load_text(f"{name}-heldout")) + 2 == len("\n\n".join(docs))
        for doc in held:
            assert doc not in train, f"a held-out document of {name} occurs in its training part"
