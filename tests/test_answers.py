"""mkvlib.answers (continuations of factual prompts), the headline figure and the decode-speed table."""
import json

import pytest
import torch
from helpers import random_projections

from mkvlib.answers import (answer_word, capital_prompts, fact_rows, format_facts, kept_facts, lowest_surviving_budget,
                            main, survival_by_budget, survives)
from mkvlib.bench import speed_table
from mkvlib.plots import HEADLINE_METHODS, headline_figure, headline_rows


class WordTokenizer:
    """Text 'w3 w17 ...' <-> ids [3, 17, ...]: enough of a tokenizer for greedy generation on a tiny model."""
    pad_token_id = 0

    def __call__(self, text, return_tensors="pt", add_special_tokens=True):
        ids = torch.tensor([[int(w[1:]) if w[:1] == "w" and w[1:].isdigit() else 1 for w in text.split()]])
        return type("Encoded", (), {"input_ids": ids})()

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{int(i)}" for i in ids)


def test_answer_word_and_survival():
    assert answer_word(" Paris. The answer is") == "paris"
    assert answer_word("the planet Jupiter") == "planet"
    assert answer_word("  ...  ") == ""
    assert survives("paris", "It is PARIS, of course") and not survives("paris", "a city of the French")
    assert not survives("", "anything")


def test_full_rank_keeps_every_answer_and_agrees_on_every_token(llama, one_thread):
    rows = fact_rows(llama, WordTokenizer(), random_projections(llama), [1.0, 0.25], "uniform",
                     prompts=("w5 w9 w11", "w40 w2"), max_new_tokens=4)
    assert [(r["prompt"], r["budget"]) for r in rows] == [("w5 w9 w11", 1.0), ("w5 w9 w11", 0.25),
                                                          ("w40 w2", 1.0), ("w40 w2", 0.25)]
    full = [r for r in rows if r["budget"] == 1.0]
    assert all(r["compressed"] == r["uncompressed"] and r["survives"] and r["token_agreement"] == 1.0 for r in full)
    assert all(1 <= len(r["compressed"].split()) <= 4 for r in rows)       # greedy may stop early at EOS
    assert "w5 w9 w11" in format_facts(rows)


def test_survival_by_budget_and_the_lowest_budget_that_keeps_them():
    rows = [{"budget": b, "survives": s} for b, s in ((1.0, True), (1.0, True), (0.5, True), (0.5, False),
                                                       (0.75, True), (0.75, True), (0.25, True), (0.25, True))]
    assert survival_by_budget(rows) == {1.0: 1.0, 0.75: 1.0, 0.5: 0.5, 0.25: 1.0}
    assert lowest_surviving_budget(rows) == 0.75              # 25% keeps them again, but 50% broke the run
    assert lowest_surviving_budget(rows, share=0.5) == 0.25
    assert lowest_surviving_budget([{"budget": 1.0, "survives": False}]) is None


def test_capital_prompts_read_the_factbook_layout(tmp_path):
    docs = ["Peru\nconventional short form: Peru\nGovernment type: republic\nname: Lima\ngeographic coordinates: x",
            "Bolivia\nconventional short form: Bolivia\nname: La Paz (administrative capital); Sucre (constitutional "
            "capital)\n",
            "Djibouti\nconventional short form: Djibouti\nname: Djibouti\n",              # the answer is in the prompt
            "Antarctica\nconventional short form: none\nname: none\n",
            "Chad\nconventional short form: Chad\nname: N'Djamena; note - the seat moves\n",
            "Nowhere\nno capital line here\n"]
    path = tmp_path / "factbook.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in docs) + "\n")
    assert capital_prompts(path) == [("The capital of Peru is", {"lima"}),
                                     ("The capital of Bolivia is", {"paz", "sucre"}),
                                     ("The capital of Chad is", {"djamena"})]


def test_prompts_after_a_passage_count_known_facts_only(llama, one_thread):
    fillers = [torch.arange(20, 36), torch.arange(40, 56)]
    rows = fact_rows(llama, WordTokenizer(), random_projections(llama), [1.0], "uniform", prompts=("w5 w9", "w7"),
                     max_new_tokens=3, fillers=fillers, expected=[{"w99999"}, set()])
    asked = len("A question unrelated to the text above: complete the sentence I begin below.".split())
    assert [r["prompt_tokens"] for r in rows] == [16 + asked + 2, 16 + asked + 1]      # passage, question, prompt
    assert all(r["whole"] == "0+0" for r in rows)
    assert not any(r["known"] for r in rows) and survival_by_budget(rows) == {}     # nothing known: nothing counted
    assert all(r["compressed"] is None and r["survives"] is None for r in rows)    # and nothing compressed
    word = rows[0]["uncompressed"].split()[0]
    known = fact_rows(llama, WordTokenizer(), random_projections(llama), [1.0, 0.5], "uniform", prompts=("w5 w9",),
                      max_new_tokens=3, fillers=fillers[:1], expected=[{word}], wholes=((0, 0), (1, 4)))
    assert [(r["whole"], r["budget"]) for r in known] == [("0+0", 1.0), ("0+0", 0.5), ("1+4", 1.0), ("1+4", 0.5)]
    assert all(r["known"] and r["answer"] == word for r in known)
    assert known[0]["survives"] and known[0]["token_agreement"] == 1.0       # every feature of every token: exact
    assert set(survival_by_budget(known)) == {1.0, 0.5}


def test_a_budget_too_small_for_the_whole_tokens_fails_before_generating(llama, monkeypatch):
    import mkvlib.answers as answers

    monkeypatch.setattr(answers, "_greedy", lambda *a: pytest.fail("generated before checking the budgets"))
    with pytest.raises(ValueError, match="cannot hold 4 \\+ 32 whole tokens"):
        fact_rows(llama, WordTokenizer(), random_projections(llama), [0.5, 0.1], "uniform", prompts=("w5 w9",),
                  max_new_tokens=3, fillers=[torch.arange(20, 100)], expected=[{"w5"}], wholes=((0, 0), (4, 32)))


def test_kept_facts_count_known_facts_per_setting():
    row = dict(allocation="adaptive", known=True, token_agreement=0.5)
    rows = [dict(row, whole="0+0", budget=0.5, survives=True), dict(row, whole="0+0", budget=0.5, survives=False),
            dict(row, whole="4+32", budget=0.5, survives=True), dict(row, whole="0+0", budget=0.75, survives=True),
            dict(row, whole="0+0", budget=0.5, known=False, survives=None, token_agreement=None)]
    assert [(c["whole"], c["budget"], c["kept"], c["known"]) for c in kept_facts(rows)] == [
        ("0+0", 0.75, 1, 1), ("0+0", 0.5, 1, 2), ("4+32", 0.5, 1, 1)]


def test_whole_tokens_without_a_longer_context_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["--keep-recent", "32", "--context", "16"])
    assert "--context longer than them" in capsys.readouterr().err


def test_bad_new_token_count_is_a_clear_error(llama):
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        fact_rows(llama, WordTokenizer(), random_projections(llama), [1.0], "uniform", prompts=("w1",),
                  max_new_tokens=0)


def _suite_record(methods=HEADLINE_METHODS):
    rows = [{"method": m, "domain": "mean", "target_budget": b, "kl_to_base": (1 - b) * (i + 1),
             "top1_agreement": b - 0.05 * i} for i, m in enumerate(methods) for b in (1.0, 0.5, 0.25)]
    return {"domains": ["a", "b"], "rows": rows}


def test_headline_figure_draws_four_lines_per_panel_in_words():
    fig = headline_figure(_suite_record())
    kl, top1 = fig.axes
    assert len(kl.lines) == len(top1.lines) == 4
    assert {t.get_text() for t in kl.get_legend().get_texts()} == {w for w, _, _ in HEADLINE_METHODS.values()}
    assert "nats" in kl.get_ylabel() and "%" in top1.get_ylabel()
    assert list(top1.lines[0].get_ydata()) == pytest.approx([100.0, 50.0, 25.0])


def test_headline_rows_name_what_the_record_lacks():
    with pytest.raises(ValueError, match="PCA, adaptive"):
        headline_rows(_suite_record([m for m in HEADLINE_METHODS if m != "PCA, adaptive"]))


def test_speed_table_separates_preallocation_from_compression():
    rows = [{"context": 64, "cache": "dynamic", "budget": None, "decode_tokens_per_s": 10.0},
            {"context": 64, "cache": "compressed", "budget": 1.0, "decode_tokens_per_s": 20.0},
            {"context": 64, "cache": "compressed", "budget": 0.5, "decode_tokens_per_s": 25.0},
            {"context": 64, "cache": "quanto", "budget": None, "decode_tokens_per_s": 5.0}]
    table = speed_table(rows)
    assert list(table.index) == [(64, 1.0), (64, 0.5)]
    assert table.loc[(64, 0.5), "preallocation"] == pytest.approx(2.0)
    assert table.loc[(64, 0.5), "compression"] == pytest.approx(1.25)
    assert table.loc[(64, 0.5), "vs DynamicCache"] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="budget 1.0"):
        speed_table([r for r in rows if r["budget"] != 1.0])
