"""The comparison run (mkvlib.compare.run, mkv compare) on a tiny model: it resumes without recomputing a stored item,
turns an unreachable byte request, an unsupported method and a failing method into rows, and summarizes."""
import contextlib
import json

import pytest

from mkvlib.cli import main
from mkvlib.compare import base
from mkvlib.compare import run as crun
from mkvlib.compare.base import ByteReport, KVMethod, Runner, Setting, full_bytes_per_token, get_method
from test_suite import CharTok

LENGTH = 600


class Counting(KVMethod):
    """The full cache under two 'settings' claiming 1/2 and 1/4 of the bytes; counts the items it runs."""
    name, axis = "counting", "token"
    calls = []

    def settings(self, model):
        return [Setting(self.name, f"{f:g}", (("f", f),)) for f in (0.5, 0.25)]

    def bytes(self, model, setting, context):
        f = setting.get("f")
        return ByteReport(full_bytes_per_token(model) * f, 0, f, context)

    @contextlib.contextmanager
    def runner(self, model, setting):
        method = self

        class R(Runner):
            def generate(self, ids, n):
                method.calls.append(("generate", setting.label))
                return super().generate(ids, n)

            def score(self, prefix, target):
                method.calls.append(("score", setting.label))
                return super().score(prefix, target)
        yield R(model)


class Unsupported(Counting):
    name = "nope"

    def unsupported(self, model):
        return "nope needs a model with sliding windows"


class Broken(Counting):
    name, axis = "broken", "composed"

    @contextlib.contextmanager
    def runner(self, model, setting):
        raise RuntimeError("out of memory")
        yield


@pytest.fixture
def registry(monkeypatch):
    for cls in (Counting, Unsupported, Broken):
        monkeypatch.setitem(base.REGISTRY, cls.name, cls)
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)     # ppl items from Python's documentation
    Counting.calls = []
    return Counting.calls


def spec(**kw):
    args = dict(methods=["counting", "nope", "broken"], fractions=[0.5, 0.125], tasks=["ppl", "passkey"],
                lengths=[LENGTH], n=2)
    args.update(kw)
    return crun.CompareSpec(**args)


def test_rows_for_unreachable_unsupported_and_failing(llama, one_thread, registry, tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as fh:
        result = crun.run_compare(llama, CharTok(), spec(), tmp_path / "c.json", progress=False, log=fh)
    status = {(s["method"], s["status"]) for s in result["status"]}
    assert ("nope", "unsupported") in status and ("broken", "failed") in status
    unreachable = [s for s in result["status"] if s["status"] == "unreachable"]
    assert {(s["method"], s["requested"]) for s in unreachable} == {("counting", 0.125), ("broken", 0.125)}
    assert "0.500, 0.250" in unreachable[0]["note"]
    assert "cost estimate: " in log.read_text() and "out of memory" in log.read_text()
    rows = {(r["method"], r["task"]): r for r in result["rows"]}
    assert rows[("counting", "passkey")]["fraction"] == 0.5 and rows[("counting", "passkey")]["requested"] == [0.5]
    assert rows[("uncompressed", "ppl")]["kl"] < 1e-6 and rows[("uncompressed", "ppl")]["perplexity_ratio"] == 1.0
    # the same cache under another name: the same predictions, KL against the uncompressed run of the same item 0
    assert rows[("counting", "ppl")]["kl"] < 1e-6 and rows[("counting", "ppl")]["n"] == 2
    assert rows[("broken", "ppl")]["status"] == "incomplete" and rows[("broken", "ppl")]["n"] == 0
    # a random tiny model cannot retrieve: flagged, and relative accuracy left out
    assert result["flagged"] == [{"task": "passkey", "length": LENGTH, "accuracy": 0.0}]
    assert rows[("counting", "passkey")]["flagged"] and rows[("counting", "passkey")]["relative"] is None
    # every item's depth is in exactly one of failed / kept, which agree with the count of correct answers
    key = rows[("counting", "passkey")]
    assert len(key["failed_depths"]) + len(key["kept_depths"]) == key["n"]
    assert len(key["kept_depths"]) == key["correct"]
    on_disk = json.loads((tmp_path / "c.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(result["rows"]))
    table = crun.format_table(result)
    assert "nope: unsupported" in table and "cannot store 0.125" in table and "model cannot do it" in table


def test_resume_does_not_recompute_stored_items(llama, one_thread, registry, tmp_path):
    out = tmp_path / "c.json"
    first = crun.run_compare(llama, CharTok(), spec(methods=["counting"]), out, progress=False)
    assert sorted(registry) == [("generate", "0.5")] * 2 + [("score", "0.5")] * 2
    stored = crun.open_store(out).rows()
    assert len(stored) == 2 * 2 * 2            # (uncompressed, counting) x (ppl, passkey) x 2 items
    registry.clear()
    again = crun.run_compare(llama, CharTok(), spec(methods=["counting"]), out, progress=False)
    assert registry == [] and len(crun.open_store(out).rows()) == 8
    assert again["rows"] == first["rows"]
    more = crun.run_compare(llama, CharTok(), spec(methods=["counting"], n=3), out, progress=False)
    assert sorted(registry) == [("generate", "0.5"), ("score", "0.5")]      # only item 2 is new
    assert {r["n"] for r in more["rows"]} == {3}
    # another model is another identity: nothing of the first is reused
    from mkvlib.models import tiny_model

    registry.clear()
    crun.run_compare(tiny_model("llama", heads=4, kv_heads=2, seed=1), CharTok(), spec(methods=["counting"]), out,
                     progress=False)
    assert len(registry) == 4


def test_store_keys_name_the_identities(llama, one_thread, registry, tmp_path):
    out = tmp_path / "c.json"
    crun.run_compare(llama, CharTok(), spec(methods=["counting"], tasks=["passkey"], n=1), out, progress=False)
    row = crun.open_store(out).rows()[-1]
    assert row["model"].startswith("tiny-llama") and "@" in row["model"]
    assert row["setting"] == "counting|f=0.5" and row["version"] == "1" and row["expected"].isdigit()
    assert crun.store_path(out) == tmp_path / "items" / "c_items.csv"
    assert json.loads(out.read_text())["items_file"] == "items/c_items.csv"


def test_estimate_scales_with_length_and_counts_ppl_twice():
    assert crun.estimate([("passkey", 1024), ("passkey", 4096), ("ppl", 1024)], 2.0, 1024) == 2 + 8 + 4


def test_parse_method_options():
    assert crun.parse_method("matryoshka:allocation=uniform:budgets=0.5") == \
        ("matryoshka", {"allocation": "uniform", "budgets": 0.5})
    assert crun.parse_method("matryoshka:budgets=0.5/0.25:projections=pca") == \
        ("matryoshka", {"budgets": (0.5, 0.25), "projections": "pca"})
    assert crun.parse_method("matryoshka:trajectory=data/a/b.json:budgets=0.75/0.5") == \
        ("matryoshka", {"trajectory": "data/a/b.json", "budgets": (0.75, 0.5)})
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        crun.parse_method("foo")


def test_one_budget_on_the_command_line_is_a_setting():
    name, options = crun.parse_method("matryoshka:budgets=0.5:allocation=uniform")
    assert get_method(name, **options).budgets == (0.5,)
    with pytest.raises(ValueError, match="fraction in"):
        get_method("pca", budgets=1.5)
    with pytest.raises(ValueError, match="name=value"):
        crun.parse_method("pca:uniform")


@pytest.mark.parametrize("argv,message", [
    (["--bytes", "2"], "byte fraction is in (0, 1]"),
    (["--methods", "pca,zzz"], "unknown method 'zzz'"),
    (["--tasks", "ppl,qa"], "unknown task 'qa'"),
    (["--lengths", "64"], "at least 192 tokens"),
    (["--out", "runs/x.csv"], "--out is a .json file"),
    (["--n", "0"], "at least 1"),
])
def test_cli_errors_before_loading_the_model(argv, message, capsys):
    assert main(["compare"] + argv) == 2
    assert message in capsys.readouterr().err
