"""The one results store behind the lm-eval sweep and the LoRA accuracy curves: resume by key, atomic rewrites,
rows other processes add kept, one schema checked with clear errors, and the committed result files fitting it."""
import csv
from pathlib import Path

import pytest

from mkvlib.results_store import ResultStore

RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"
FIELDS = ("method", "budget", "task", "acc")


def store(path, **kw):
    return ResultStore(path, key_fields=("method", "budget", "task"), fields=FIELDS, **kw)


def test_resume_skips_stored_keys_and_keeps_the_first_row(tmp_path):
    path = tmp_path / "r.csv"
    s = store(path)
    assert s.rows() == [] and not s.done(("pca", 0.5, "piqa"))
    assert s.add({"method": "pca", "budget": 0.5, "task": "piqa", "acc": 0.6})
    again = store(path)                                   # a new run on the same file
    assert again.done({"method": "pca", "budget": "0.5", "task": "piqa"})   # 0.5 and "0.5" are one key
    assert not again.done({"method": "pca", "budget": "0.5000", "task": "piqa"})
    assert not again.add({"method": "pca", "budget": 0.5, "task": "piqa", "acc": 0.1})
    assert again.add({"method": "pca", "budget": 0.25, "task": "piqa", "acc": None})
    assert again.rows() == [{"method": "pca", "budget": "0.5", "task": "piqa", "acc": "0.6"},
                            {"method": "pca", "budget": "0.25", "task": "piqa", "acc": ""}]
    assert again.get(("pca", 0.25, "piqa"))["acc"] == "" and again.get(("x", 1, "y")) is None
    with pytest.raises(ValueError, match="has 3 values"):
        again.done(("pca", 0.5))


def test_rows_another_process_added_are_kept(tmp_path):
    path = tmp_path / "r.csv"
    mine, theirs = store(path), store(path)
    assert mine.add({"method": "a", "budget": 1, "task": "t", "acc": 1})
    assert theirs.add({"method": "b", "budget": 1, "task": "t", "acc": 2})
    assert mine.add({"method": "c", "budget": 1, "task": "t", "acc": 3})
    assert [r["method"] for r in store(path).rows()] == ["a", "b", "c"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    s = store(path)
    s.add({"method": "a", "budget": 1, "task": "t", "acc": 1})
    before = path.read_bytes()

    def crash(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", crash)
    with pytest.raises(OSError, match="disk full"):
        s.add({"method": "b", "budget": 1, "task": "t", "acc": 2})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]


def test_schema_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="ending in .csv"):
        store(tmp_path / "r.json")
    with pytest.raises(ValueError, match=r"key fields \['task'\] are not among"):
        ResultStore(tmp_path / "r.csv", ("task",), ("method",))
    s = store(tmp_path / "r.csv")
    with pytest.raises(ValueError, match=r"columns \['seed'\] that are not in the schema"):
        s.add({"method": "a", "budget": 1, "task": "t", "acc": 1, "seed": 0})
    with pytest.raises(ValueError, match=r"lacks the key field\(s\) \['task'\]"):
        s.add({"method": "a", "budget": 1, "acc": 1})
    assert not (tmp_path / "r.csv").exists()              # nothing written by a rejected row

    other = tmp_path / "other.csv"
    other.write_text("method,budget,task,acc,kl\na,1,t,0.5,0.1\n")
    with pytest.raises(ValueError, match=r"columns \['kl'\] that are not in this table's schema"):
        store(other).rows()
    keyless = tmp_path / "keyless.csv"
    keyless.write_text("method,budget,acc\na,1,0.5\n")
    with pytest.raises(ValueError, match="no 'task' column, part of this table's key"):
        store(keyless).rows()
    damaged = tmp_path / "damaged.csv"
    damaged.write_text("method,budget,task,acc\na,1,t,0.5,extra\n")
    with pytest.raises(ValueError, match="damaged"):
        store(damaged).rows()


def test_a_column_older_files_lack_reads_empty_and_is_added_on_write(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("method,budget,task\na,1,t\n")        # written before the 'acc' column existed
    s = ResultStore(path, ("method", "budget", "task"), ("method", "budget", "task", "acc"))
    assert s.rows() == [{"method": "a", "budget": "1", "task": "t", "acc": ""}]
    assert s.done(("a", 1, "t"))
    assert s.add({"method": "b", "budget": 1, "task": "t", "acc": 0.5})
    assert path.read_text().splitlines() == ["method,budget,task,acc", "a,1,t,", "b,1,t,0.5"]


def test_without_fields_the_schema_is_the_first_row_then_the_header(tmp_path):
    path = tmp_path / "r.csv"
    s = ResultStore(path, ("method",))
    s.add({"acc": 1, "method": "a"})
    assert path.read_text().splitlines()[0] == "method,acc"
    with pytest.raises(ValueError, match="not in the schema"):
        ResultStore(path, ("method",)).add({"method": "b", "kl": 0})


def test_write_keeps_rows_sharing_a_key(tmp_path):
    s = store(tmp_path / "r.csv")
    s.write([{"method": "a", "budget": 1, "task": "t", "acc": 1}, {"method": "a", "budget": 1, "task": "t", "acc": 2}])
    assert [r["acc"] for r in s.rows()] == ["1", "2"] and s.get(("a", 1, "t"))["acc"] == "2"


@pytest.mark.parametrize("name", sorted(p.name for pattern in ("lm_eval_*.csv", "lora_*.csv")
                                        for p in RESULTS.glob(pattern)))
def test_committed_result_files_fit_their_schema_unchanged(name, tmp_path):
    """Every committed lm-eval sweep and LoRA accuracy CSV reads through its table's store, and rewriting its rows
    gives the same bytes: the store changed no format and no value."""
    from mkvlib.lmeval.sweep import results_store as sweep_store
    from mkvlib.lora.accuracy import results_store as lora_store

    path = RESULTS / name
    s = (lora_store if name.startswith("lora_") else sweep_store)(path)
    rows = s.rows()
    assert rows and len(s.keys()) == len(rows)             # no two rows of one cell
    copy = (lora_store if name.startswith("lora_") else sweep_store)(tmp_path / name)
    copy.write(rows)
    assert copy.path.read_bytes() == path.read_bytes()


def test_the_docstring_example_runs():
    import doctest

    import mkvlib.results_store

    assert doctest.testmod(mkvlib.results_store).failed == 0
