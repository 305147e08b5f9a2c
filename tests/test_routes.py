"""Reading the out-of-domain suite and routes records of notebook 02 (mkvlib.suite, mkvlib.training.report)."""
import json

import pytest

from mkvlib.results_store import load_result
from mkvlib.suite import gap_rows, suite_cell, suite_curves
from mkvlib.training.report import CpuClock, objective_weights, reference_lines, routes_figure, routes_of, same_ratio


def _record():
    rows = []
    for method, ood, ind in (("PCA, uniform", 1.2, 0.6), ("trained, uniform", 0.6, 0.2),
                             ("trained, adaptive", 0.5, 0.2)):
        for b in (0.75, 0.5, 0.375):
            scale = 1.0 if b == 0.5 else 0.5
            rows.append({"method": method, "domain": "mean", "target_budget": b, "budget": b,
                         "kl_to_base": ood * scale, "perplexity_ratio": 1 + ood * scale})
            rows.append({"method": method, "domain": "books-heldout", "target_budget": b, "budget": b,
                         "kl_to_base": ood * scale, "perplexity_ratio": 1 + ood * scale})
            if method.startswith("trained"):
                rows.append({"method": method, "domain": "in-domain", "target_budget": b, "budget": b,
                             "kl_to_base": ind * scale, "perplexity_ratio": 1 + ind * scale})
    return {"budgets": [0.75, 0.5], "domains": ["books-heldout"], "tokens_per_domain": 512, "seq_len": 512,
            "methods": [{"label": "PCA, uniform"}, {"label": "trained, uniform"}], "rows": rows}


def test_gap_rows_in_and_out_of_domain():
    gaps = {g["method"]: g for g in gap_rows(_record(), 0.5)}
    assert gaps["trained, uniform"]["ood_kl"] == pytest.approx(0.6)
    assert gaps["trained, uniform"]["in_domain_kl"] == pytest.approx(0.2)
    assert gaps["trained, uniform"]["kl_gap"] == pytest.approx(3.0)
    assert gaps["PCA, uniform"]["in_domain_kl"] is None and gaps["PCA, uniform"]["kl_gap"] is None


def test_suite_cell_names_what_is_missing():
    rows = _record()["rows"]
    assert suite_cell(rows, "PCA, uniform", 0.75, "books-heldout")["kl_to_base"] == pytest.approx(0.6)
    with pytest.raises(KeyError, match="no suite row for 'PCA, uniform' on 'in-domain' at budget 0.5"):
        suite_cell(rows, "PCA, uniform", 0.5, "in-domain")


def test_suite_curves_order_by_falling_budget():
    curves = suite_curves(list(reversed(_record()["rows"])))
    assert list(curves) == ["trained, adaptive", "trained, uniform", "PCA, uniform"]
    assert [r["budget"] for r in curves["PCA, uniform"]] == [0.75, 0.5, 0.375]
    assert all(r["domain"] == "mean" for rows in curves.values() for r in rows)


def test_objective_weights_and_ratios():
    assert objective_weights("KD only") == (1.0, 0.0)
    assert objective_weights("KD : LM = 3 : 1") == (3.0, 1.0)
    assert objective_weights("KD:LM=1:3") == (1.0, 3.0)
    with pytest.raises(ValueError, match="not an objective label"):
        objective_weights("end-to-end from PCA")
    assert same_ratio((1.0, 3.0), (2.0, 6.0)) and same_ratio((1.0, 0.0), (3.0, 0.0))
    assert not same_ratio((1.0, 3.0), (3.0, 1.0)) and not same_ratio((1.0, 0.0), (1.0, 3.0))


def test_routes_of_and_figure():
    rec = {"routes": [{"route": "PCA", "group": "start", "cpu_minutes": 0.0, "ood_kl_50": 1.2},
                      {"route": "KD only", "group": "objective", "cpu_minutes": 60.0, "ood_kl_50": 0.5},
                      {"route": "wiki", "group": "reference", "cpu_minutes": 24.0, "ood_kl_50": 0.9},
                      {"route": "both", "group": "combined", "cpu_minutes": 70.0, "ood_kl_50": 0.4}]}
    assert [r["route"] for r in routes_of(rec, "objective")] == ["KD only"]
    with pytest.raises(ValueError, match="group must be"):
        routes_of(rec, "starts")
    lines = reference_lines(rec["routes"])
    assert lines == {"a third of PCA's KL": pytest.approx(0.4), "KD : LM = 3 : 1 on WikiText-2 (reference)": 0.9}
    assert reference_lines([rec["routes"][1]]) == {}
    fig = routes_figure(rec["routes"], lines)
    ax = fig.axes[0]
    assert "CPU-minutes" in ax.get_xlabel() and "50%" in ax.get_ylabel()
    names = {t.get_text() for t in ax.get_legend().get_texts()}
    assert names == {"PCA (start)", "KD only (objective)", "wiki (reference)", "both (combined)",
                     "a third of PCA's KL", "KD : LM = 3 : 1 on WikiText-2 (reference)"}


def test_load_result_missing_then_present(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MKV_PROJECT_DIR", str(tmp_path))
    assert load_result("ood_suite.json") is None
    assert "data/results/ood_suite.json is not there yet" in capsys.readouterr().out
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "ood_suite.json").write_text(json.dumps({"rows": []}))
    assert load_result("ood_suite.json") == {"rows": []}


def test_cpu_clock():
    with CpuClock() as clock:
        sum(i * i for i in range(20000))
        with pytest.raises(RuntimeError, match="still running"):
            clock.minutes
    assert clock.seconds >= 0 and clock.minutes == pytest.approx(clock.seconds / 60)
