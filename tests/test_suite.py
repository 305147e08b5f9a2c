"""The out-of-domain suite (mkvlib.suite) and offline passkey retrieval (mkvlib.retrieval) on tiny models."""
import json
import math

import pytest
import torch

from helpers import needs_model, random_projections, CharTok
import mkvlib.core.ranks
from mkvlib import retrieval, suite
from mkvlib.core.compress import attach
from mkvlib.core.geometry import KVGeometry
from mkvlib.core.ranks import Method



class ChatTok(CharTok):
    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        body = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return body + ("<|assistant|>" if add_generation_prompt else "")


def domain_blocks(seed=0, domains=("alpha", "beta"), n=2, seq_len=12):
    g = torch.Generator().manual_seed(seed)
    return {d: torch.randint(0, 128, (n, seq_len), generator=g) for d in domains}


# --- the suite -----------------------------------------------------------------------------------------------

def test_evaluate_suite_rows_and_means(llama, one_thread):
    blocks = domain_blocks()
    with attach(llama, random_projections(llama), 1.0) as comp:
        rows = suite.evaluate_suite(llama, comp, [1.0, 0.5, 0.25], blocks, batch_size=2)
    assert len(rows) == 2 * 3 + 3
    full = [r for r in rows if r["setting"] == 0]
    assert all(math.isclose(r["perplexity_ratio"], 1.0, rel_tol=1e-5) and abs(r["kl_to_base"]) < 1e-5 for r in full)
    for s in (1, 2):
        mine = [r for r in rows if r["setting"] == s and r["domain"] != "mean"]
        mean = next(r for r in rows if r["setting"] == s and r["domain"] == "mean")
        assert [r["domain"] for r in mine] == ["alpha", "beta"]
        assert math.isclose(mean["kl_to_base"], sum(r["kl_to_base"] for r in mine) / 2)
        assert math.isclose(mean["perplexity_ratio"], sum(r["perplexity_ratio"] for r in mine) / 2)
        assert mean["tokens"] == sum(r["tokens"] for r in mine) and mean["domains"] == 2
    quarter = next(r for r in rows if r["setting"] == 2 and r["domain"] == "mean")
    assert quarter["kl_to_base"] > 0 and quarter["budget"] == 0.25


def test_compare_suite_methods_and_table(llama, one_thread, monkeypatch):
    """Several (label, projections, allocation) methods in one call; adaptive ranks come from the search."""
    geom = KVGeometry.of(llama)
    asked = []

    def fake_ranks_for(model, projections, allocation, budget, trajectory=None):
        if allocation == "uniform":
            return budget
        asked.append((budget, trajectory))
        ranks = torch.full((geom.layers, geom.kv_heads, 2), round(budget * geom.head_dim))
        ranks[0, 0, 0] = geom.head_dim
        return ranks

    monkeypatch.setattr(mkvlib.core.ranks, "ranks_for", fake_ranks_for)     # what Method.ranks calls
    methods = [("random uniform", random_projections(llama, 1)),
               Method("other adaptive", random_projections(llama, 2), "adaptive", trajectory="t.json")]
    rows = suite.compare_suite(llama, methods, [0.75, 0.5], domain_blocks(), batch_size=2)
    assert len(rows) == 2 * (2 * 2 + 2)
    assert asked == [(0.75, "t.json"), (0.5, "t.json")]
    assert {r["method"] for r in rows} == {"random uniform", "other adaptive"}
    assert {r["target_budget"] for r in rows} == {0.75, 0.5}
    table = suite.format_suite_table(rows)
    for text in ("random uniform", "other adaptive", "alpha", "beta", "mean", "budget 0.750", "budget 0.500"):
        assert text in table
    with pytest.raises(ValueError, match="allocation"):
        Method("x", "pca", "greedy")


def test_compare_suite_whole_tokens_spend_the_same_bytes(llama, one_thread):
    """A method keeping tokens whole reads a budget as stored bytes: fewer features, about the same bytes."""
    from mkvlib.core.ranks import stored_fraction

    blocks = domain_blocks()
    tokens = next(iter(blocks.values())).shape[1]
    proj = random_projections(llama, 1)
    rows = suite.compare_suite(llama, [Method("plain", proj), Method("whole", proj, keep_first=1, keep_recent=3)],
                               [0.75], blocks, batch_size=2)
    plain = next(r for r in rows if r["method"] == "plain" and r["domain"] == "mean")
    whole = next(r for r in rows if r["method"] == "whole" and r["domain"] == "mean")
    assert "stored_fraction" not in plain and whole["keep_recent"] == 3
    assert whole["budget"] < plain["budget"] == 0.75
    assert whole["stored_fraction"] == pytest.approx(stored_fraction(whole["budget"], tokens, 1, 3))
    assert whole["stored_fraction"] <= 0.75 + 1 / 16      # uniform ranks round to whole features
    with pytest.raises(ValueError, match="keep_recent must be a whole number"):
        Method("x", "pca", keep_recent=-3)


def test_suite_blocks_skip_missing_domains_with_one_note(monkeypatch, capsys):
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    blocks = suite.suite_blocks(CharTok(), 256, seq_len=64)
    assert list(blocks) == ["pydoc-test"] and blocks["pydoc-test"].shape == (4, 64)
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "books-heldout" in err and "wikitext2-test" in err
    with pytest.raises(ValueError, match="at least seq_len"):
        suite.suite_blocks(CharTok(), 32, seq_len=64)


def test_suite_domains_are_all_held_out_of_training():
    from mkvlib.corpora import HeldOutCorpusError, check_not_heldout

    for domain in suite.DOMAINS:
        with pytest.raises(HeldOutCorpusError):
            check_not_heldout(domain)


# --- passkey retrieval ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("tok", [CharTok(), ChatTok()], ids=["plain", "chat"])
def test_passkey_prompts_reproducible_key_once_depth_varies(tok):
    prompts = retrieval.passkey_prompts(tok, 1000, n=6, seed=3)
    again = retrieval.passkey_prompts(tok, 1000, n=6, seed=3)
    unit = len(retrieval.FILLER) + 1
    for p, q in zip(prompts, again):
        assert torch.equal(p.ids, q.ids) and p.key == q.key and p.depth == q.depth
        assert len(p.key) == 5 and p.key.isdigit() and p.text.count(p.key) == 1
        assert 1000 - unit < p.ids.shape[1] <= 1000 and p.ids.shape[0] == 1
        assert p.text.endswith(retrieval.ANSWER_PREFIX) and retrieval.QUESTION in p.text
    assert len({p.depth for p in prompts}) == 6 and len({p.key for p in prompts}) == 6
    positions = {p.text.index(p.key) for p in prompts}
    assert len(positions) >= 4                   # the needle sits between filler groups: few slots at 1000
    other = retrieval.passkey_prompts(tok, 1000, n=6, seed=4)
    assert [p.key for p in other] != [p.key for p in prompts]
    assert ("<|assistant|>" in prompts[0].text) == isinstance(tok, ChatTok)
    with pytest.raises(ValueError, match="needs more than"):
        retrieval.passkey_prompt(tok, 50)


def test_passkey_depth_puts_the_key_where_it_says():
    early = next(p for p in (retrieval.passkey_prompt(CharTok(), 4000, s) for s in range(50)) if p.depth < 0.2)
    late = next(p for p in (retrieval.passkey_prompt(CharTok(), 4000, s) for s in range(50)) if p.depth > 0.8)
    assert early.text.index(early.key) / len(early.text) < 0.3 < 0.7 < late.text.index(late.key) / len(late.text)


def test_score_answer_is_exact_match_of_the_first_number():
    key = "48213"
    assert retrieval.score_answer(" 48213.", key)
    assert retrieval.score_answer("it is 48213", key)
    assert not retrieval.score_answer(" 4821", key)
    assert not retrieval.score_answer(" 482134", key)
    assert not retrieval.score_answer(" 12345, no, 48213", key)
    assert not retrieval.score_answer(" the sky is blue", key)


class Parrot(torch.nn.Module):
    """A 'model' whose greedy answer is a fixed text (the key or not)."""

    def __init__(self, answer):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.answer = answer

    def generate(self, input_ids, max_new_tokens, use_cache, do_sample, **kw):
        assert use_cache and not do_sample
        new = torch.tensor([[ord(c) for c in self.answer(input_ids)][:max_new_tokens]])
        return torch.cat([input_ids, new], dim=1)


def test_passkey_accuracy_scores_greedy_answers():
    tok = CharTok()
    prompts = retrieval.passkey_prompts(tok, 400, n=4)
    keys = {tuple(p.ids[0].tolist()): p.key for p in prompts}
    right = retrieval.passkey_accuracy(Parrot(lambda ids: f" {keys[tuple(ids[0].tolist())]}."), prompts, tok)
    assert right["accuracy"] == 1.0 and right["correct"] == 4 and right["answers"][0].strip(" .") == prompts[0].key
    wrong = retrieval.passkey_accuracy(Parrot(lambda ids: " 00000"), prompts, tok)
    assert wrong["accuracy"] == 0.0
    half = retrieval.passkey_accuracy(Parrot(lambda ids: f" {prompts[0].key}"), prompts[:2], tok)
    assert half["accuracy"] == 0.5


class Oracle(torch.nn.Module):
    """Teacher-forced 'model' whose logits at each position put ``margin`` on the next input token."""

    def __init__(self, margin):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.margin = margin

    def forward(self, ids, use_cache=False):
        logits = torch.zeros(1, ids.shape[1], 128)
        logits[0, torch.arange(ids.shape[1] - 1), ids[0, 1:]] = self.margin
        return type("Out", (), {"logits": logits})()


def test_key_margins_teacher_forced_on_known_models():
    tok = CharTok()
    prompts = retrieval.passkey_prompts(tok, 400, n=3)
    answer = retrieval.answer_ids(tok, prompts[0])
    assert tok.decode(answer.tolist()) == " " + prompts[0].key
    sure = retrieval.key_margins(Oracle(40.0), prompts, tok)
    assert all(abs(v) < 1e-6 for v in sure["key_logp"])
    assert sure["first_margin"] == [0.0] * 3 and sure["top"] == [" "] * 3
    flat = retrieval.key_margins(Oracle(0.0), prompts, tok)                  # uniform over 128 tokens
    assert flat["key_logp"] == pytest.approx([-len(answer) * math.log(128)] * 3, abs=1e-3)
    assert flat["mean_key_logp"] == pytest.approx(-len(answer) * math.log(128), abs=1e-3)

    class Reversed(CharTok):
        def __call__(self, text, **kw):
            return {"input_ids": super().__call__(text)["input_ids"][::-1]}
    with pytest.raises(ValueError, match="merges"):
        retrieval.answer_ids(Reversed(), prompts[0])


@torch.no_grad()
def test_key_margins_agree_with_greedy_decoding(llama, one_thread):
    """The first margin is 0 exactly where greedy decoding opens with the key's first token, and ``top`` is the
    token it opens with; at full rank the compressed model's margins are the uncompressed model's."""
    tok = CharTok()
    prompts = retrieval.passkey_prompts(tok, 300, n=4)
    base = retrieval.key_margins(llama, prompts, tok)
    for p, margin, top in zip(prompts, base["first_margin"], base["top"]):
        first = retrieval.generate_answer(llama, p, tok, max_new_tokens=1)
        assert first == top and margin <= 0
        assert (margin == 0) == (first == tok.decode([int(retrieval.answer_ids(tok, p)[0])]))
    proj = random_projections(llama, 3)
    with attach(llama, proj, 1.0):
        full = retrieval.key_margins(llama, prompts, tok)
    with attach(llama, proj, 0.25):
        low = retrieval.key_margins(llama, prompts, tok)
    assert full["key_logp"] == pytest.approx(base["key_logp"], abs=1e-3)
    assert low["key_logp"] != pytest.approx(base["key_logp"], abs=1e-3)


@torch.no_grad()
def test_key_margins_find_the_greedy_answer_and_not_one_token_off(llama, one_thread, monkeypatch):
    """``found``: every key token the most probable one given those before it, as greedy decoding writes it."""
    tok = CharTok()
    prompt = retrieval.passkey_prompts(tok, 300, n=1)[0]
    length = prompt.ids.shape[1]
    greedy = llama.generate(prompt.ids, max_new_tokens=4, do_sample=False)[0, length:]
    other = greedy.clone()
    other[-1] = (other[-1] + 1) % 128
    scores = []
    for answer in (greedy, other):
        monkeypatch.setattr(retrieval, "answer_ids", lambda tokenizer, p, a=answer: a)
        scores.append(retrieval.key_margins(llama, [prompt], tok))
    assert scores[0]["found"] == [True] and scores[1]["found"] == [False]
    assert scores[1]["key_logp"][0] < scores[0]["key_logp"][0] <= 0


@torch.no_grad()
def test_compressed_generate_with_cache_matches_decoding_without(llama, one_thread):
    """The hook projects cached and new keys/values alike: greedy decoding with the cache equals greedy
    decoding by full forward passes without one, under compression."""
    prompt = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(5))
    with attach(llama, random_projections(llama, 3, value_mean=True), 0.5):
        cached = llama.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                use_cache=True, pad_token_id=0)
        ids = prompt
        for _ in range(cached.shape[1] - prompt.shape[1]):
            nxt = llama(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    plain = llama.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                           pad_token_id=0)
    assert torch.equal(cached, ids)
    assert cached.shape[1] > prompt.shape[1] and not torch.equal(cached, plain)


def test_first_failure_is_the_highest_failing_budget():
    rows = [dict(budget=b, accuracy=a, base_accuracy=1.0) for b, a in [(1.0, 1.0), (0.75, 0.9), (0.5, 0.25),
                                                                       (0.375, 1.0), (0.25, 0.0)]]
    assert retrieval.first_failure(rows) == 0.5
    assert retrieval.first_failure(rows[:2]) is None
    assert retrieval.first_failure([dict(budget=0.5, accuracy=0.0, base_accuracy=0.0)]) is None


def test_retrieval_curve_on_a_tiny_model(llama, one_thread):
    result = retrieval.retrieval_curve(llama, CharTok(), [("random", random_projections(llama))], [0.5, 1.0],
                                       lengths=(300, 400), n=2, max_new_tokens=3)
    assert set(result["base"]) == {300, 400}
    assert [(r["budget"], r["length"]) for r in result["rows"]] == [(1.0, 300), (1.0, 400), (0.5, 300), (0.5, 400)]
    full = [r for r in result["rows"] if r["budget"] == 1.0]
    assert all(r["accuracy"] == r["base_accuracy"] for r in full)      # full rank is exact
    assert set(result["fails_at"]) == {"random"} and set(result["fails_at_by_length"]["random"]) == {300, 400}
    table = retrieval.format_retrieval_table(result)
    assert "uncompressed" in table and "random" in table and "first fails" in table


# --- mkv eval --suite ood ------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, match", [
    (["--suite", "ood", "--corpus", "pydoc-test"], "leave out --corpus"),
    (["--suite", "ood", "--ranks", "r.json"], "--ranks is not supported"),
    (["--retrieval"], "add --suite ood"),
    (["--in-domain", "512"], "add --suite ood"),
    (["--out", "x.json"], "add --suite ood"),
    (["--suite", "ood", "--in-domain", "8", "--seq-len", "64"], "--in-domain (8) must be 0 or at least"),
    (["--projections", "pca,trained"], "need --suite ood"),
    (["--allocation", "uniform,adaptive"], "need --suite ood"),
    (["--suite", "ood", "--allocation", "greedy"], "--allocation takes uniform or adaptive"),
    (["--suite", "ood", "--retrieval-lengths", "1k"], "token counts"),
    (["--keep-recent", "32"], "add --suite ood"),
    (["--suite", "ood", "--keep-recent", "a,b"], "--keep-recent takes comma-separated token counts"),
])
def test_eval_suite_argument_errors(argv, match, capsys):
    from mkvlib.cli import main

    assert main(["eval", *argv]) == 2
    assert match in capsys.readouterr().err


@needs_model
def test_eval_suite_cli_on_the_embedded_model(monkeypatch, capsys, tmp_path):
    """Without a data folder the suite is pydoc-test alone (one note); JSON rows per method, budget and domain;
    --out writes the same result with the command that made it."""
    from mkvlib.cli import main

    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    assert main(["eval", "--suite", "ood", "--json", "--tokens", "128", "--seq-len", "64", "--budgets", "1,0.5",
                 "--projections", "pca", "--allocation", "uniform,adaptive", "--retrieval",
                 "--retrieval-lengths", "160", "--retrieval-n", "1", "--out", str(tmp_path / "suite.json")]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["domains"] == ["pydoc-test"] and "books-heldout" in out["skipped"] and "note:" in captured.err
    assert [m["label"] for m in out["methods"]] == ["PCA, uniform", "PCA, adaptive"]
    assert {m["fingerprint"] for m in out["methods"]} == {r["projections"] for r in out["rows"]}
    stored = json.loads((tmp_path / "suite.json").read_text())
    assert stored["rows"] == out["rows"] and "wall_time_s" in stored and "hardware" in stored
    assert len(out["rows"]) == 2 * 2 * 2                    # methods x budgets x (pydoc-test + mean)
    full = [r for r in out["rows"] if r["target_budget"] == 1.0]
    assert all(abs(r["kl_to_base"]) < 1e-5 for r in full)
    ret = out["retrieval"]
    assert set(ret["fails_at"]) == {"PCA, uniform", "PCA, adaptive"} and len(ret["rows"]) == 2 * 2


@needs_model
def test_eval_suite_whole_tokens_on_the_embedded_model(monkeypatch, capsys):
    """--keep-recent gives one method per window; budgets count stored bytes, whole tokens included."""
    from mkvlib.cli import main
    from mkvlib.core.ranks import stored_fraction

    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    assert main(["eval", "--suite", "ood", "--json", "--tokens", "128", "--seq-len", "64", "--budgets", "0.5",
                 "--projections", "pca", "--keep-first", "2", "--keep-recent", "0,8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["label"] for m in out["methods"]] == ["PCA, uniform, 2 first + 0 recent tokens whole",
                                                    "PCA, uniform, 2 first + 8 recent tokens whole"]
    means = {r["method"]: r for r in out["rows"] if r["domain"] == "mean"}
    wide = means["PCA, uniform, 2 first + 8 recent tokens whole"]
    assert wide["stored_fraction"] == pytest.approx(stored_fraction(wide["budget"], 64, 2, 8))
    assert abs(wide["stored_fraction"] - 0.5) <= 1 / 64 and wide["budget"] < 0.5
    assert main(["eval", "--suite", "ood", "--tokens", "128", "--seq-len", "64", "--budgets", "0.1",
                 "--keep-recent", "16"]) == 2
    assert "cannot hold 0 + 16 whole tokens" in capsys.readouterr().err


def test_retrieval_curve_with_whole_tokens_counts_bytes_per_length(llama, one_thread, monkeypatch):
    """A method keeping tokens whole gets, at each prompt length, the features that store the asked bytes."""
    from mkvlib.core.ranks import Method

    asked = []
    real = Method.feature_budget

    def spy(self, budget, tokens):
        asked.append((budget, tokens))
        return real(self, budget, tokens)

    monkeypatch.setattr(Method, "feature_budget", spy)
    method = Method("whole", random_projections(llama), keep_first=1, keep_recent=4)
    result = retrieval.retrieval_curve(llama, CharTok(), [method], [0.5], lengths=(300, 400), n=1, max_new_tokens=3)
    assert sorted(asked) == [(0.5, 300), (0.5, 400)]
    assert [(r["budget"], r["length"]) for r in result["rows"]] == [(0.5, 300), (0.5, 400)]


def test_retrieval_curve_refuses_a_budget_before_scoring_any_prompt(llama, one_thread, monkeypatch):
    """A method that cannot hold a budget at some length fails at once, not after the other methods have run."""
    from mkvlib.core.ranks import Method

    scored = []
    monkeypatch.setattr(retrieval, "passkey_accuracy", lambda *a, **k: scored.append(a) or {"accuracy": 1.0})
    fits, too_wide = Method("fits", random_projections(llama)), Method("wide", random_projections(llama),
                                                                        keep_recent=200)
    with pytest.raises(ValueError, match="whole tokens"):
        retrieval.retrieval_curve(llama, CharTok(), [fits, too_wide], [0.5], lengths=(300,), n=1, max_new_tokens=3)
    assert scored == []
