"""The statements notebook 08 and the generated docs make about the ladder's whole-token frontier and its decode
speed, checked against the committed files (data/results/ladder_frontier_whole.json, bench_ladder_b4_c2048.json)."""
import json

import pytest

from mkvlib.core.env import project_dir

RESULTS = project_dir() / "data" / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_whole_token_frontier_is_made_by_its_command():
    rec = load("ladder_frontier_whole.json")
    assert rec["command"].startswith("python -m mkvlib.ladder_run frontier --trajectory ")
    assert f"--keep-first {rec['keep_first']}" in rec["command"]
    assert f"--keep-recent {rec['keep_recent']}" in rec["command"]
    assert rec["keep_first"] + rec["keep_recent"] > 0


def test_whole_token_bytes_are_measured_and_in_all_settings_keep_their_budget():
    """Every measured row holds its planned bits (whole tokens included); an 'in all' row stays within the ladder
    alone's bytes and spends less of them in the ladder; an '+' row adds exactly the whole tokens' bytes."""
    rec = load("ladder_frontier_whole.json")
    rows = {r["label"]: r for r in rec["rows"]}
    whole_bits = (rec["keep_first"] + rec["keep_recent"]) / rec["suite"]["seq_len"] * rec["layout"]["full_bits"]
    for r in rec["rows"]:
        if "kl_ood" in r:
            assert r["measured_bits_per_element"] == pytest.approx(r["bits_per_element"], rel=0.01)
        if r["family"] == "ladder, tokens whole, equal bytes" and "kl_ood" in r:
            assert r["bits_per_element"] <= r["target_bits"] + 1e-6
            assert r["ladder_bits_per_element"] < r["target_bits"]
        if r["family"] == "ladder, tokens whole, added bytes":
            alone = rows[r["label"].split(" + ")[0]]
            assert r["bits_per_element"] == pytest.approx(alone["bits_per_element"] + whole_bits, abs=1e-3)


def test_whole_token_passkey_holds_its_bytes_through_the_real_cache():
    rec = load("ladder_frontier_whole.json")
    lengths = {p["length"] for p in rec["passkey"]}
    for p in rec["passkey"]:
        if p["bits"] is not None and "correct" in p:
            assert p["measured_bits_per_element"] <= p["bits"] * 1.01
            assert p["ladder_bits_per_element"] < p["bits"]
    assert all(any(p["bits"] is None and p["length"] == n for p in rec["passkey"]) for n in lengths)


def test_ladder_bench_holds_the_planned_bytes_and_decodes_slower():
    """The docs say the ladder holds its planned bytes, the same bytes as the compressed cache at that budget,
    and unpacks its prefix at every step: it decodes slower than DynamicCache and the compressed cache."""
    rec = load("bench_ladder_b4_c2048.json")
    assert rec["command"].startswith("python -m mkvlib.bench.record ladder ")
    rows = {r["cache"]: r for r in rec["rows"]}
    assert {"dynamic", "quanto"} <= set(rows)
    ladders = [name for name in rows if name.startswith("ladder@")]
    assert ladders
    for name in ladders:
        twin = rows[name.replace("ladder", "compressed")]
        assert rows[name]["measured_bits_per_element"] == pytest.approx(rows[name]["planned_bits_per_element"],
                                                                        rel=0.01)
        assert rows[name]["cache_bytes"] == pytest.approx(twin["cache_bytes"], rel=0.01)
        assert rows[name]["decode_tokens_per_s"] < min(rows["dynamic"]["decode_tokens_per_s"],
                                                        twin["decode_tokens_per_s"])


def test_ladder_retrieval_bench_lands_on_its_bits_and_quanto_above_them():
    """Notebook 08 and the docs say the ladder's rows hold 4, 2 and 1 bits per element of the float32 cache and
    quanto's 4- and 2-bit caches (residual window 1) hold 5 and 3: more than the ladder's."""
    rec = load("compare_ladder.json")
    assert rec["command"].startswith("mkv compare --methods uncompressed,ladder:bits=")
    assert "quant:residual_length=1" in rec["command"]
    full_bits = 32
    ladder_bits = {r["params"]["bits"] for r in rec["rows"] if r["method"].startswith("ladder") and r.get("n")}
    assert ladder_bits == {4.0, 2.0, 1.0}
    for r in rec["rows"]:
        if r["method"].startswith("ladder") and r.get("n"):
            assert r["fraction"] * full_bits == pytest.approx(r["params"]["bits"], rel=0.01)
        if r["method"].startswith("quant") and r.get("n"):
            assert r["fraction"] * full_bits == pytest.approx(r["params"]["nbits"] + 1, rel=0.01)
