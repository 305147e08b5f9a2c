"""Single numbers from the data, for sentences: ``<!-- generated: NAME -->95.1%<!-- /generated -->``.

A fact is ``fn(data) -> str`` registered with :func:`fact`; README.md or docs/*.md quote it inline."""
from __future__ import annotations

from ..answers import kept_facts, survival_by_budget
from ..lmeval import report
from .markdown import pct
from .ood import WINDOW_128_SUITES, whole_token_rows, window_128_records
from .records import Data, register

FACTS: dict = {}


def fact(name: str):
    return lambda fn: register(FACTS, name, fn) or fn


def _record(data: Data, name: str) -> dict:
    if (rec := data.result(name)[1]) is None:
        raise KeyError(f"{name} is not committed")
    return rec


def _ood_mean(data: Data, method: str) -> dict:
    """The out-of-domain suite's mean row of ``method`` at 50%."""
    return next(r for r in _record(data, "ood_suite.json")["rows"] if r["method"] == method
                and r["domain"] == "mean" and r["target_budget"] == 0.5)


FACTS.update({          # trained projections with searched ranks, and PCA, at 50% out of domain
    "ood-best-ppl-50": lambda data: "{perplexity_ratio:.2f}x perplexity and a KL of {kl_to_base:.2f}".format(
        **_ood_mean(data, "MatryoshkaKV, adaptive")),
    "ood-pca-ppl-50": lambda data: "{perplexity_ratio:.2f}x and {kl_to_base:.2f}".format(
        **_ood_mean(data, "PCA, uniform")),
    "ood-top1-50": lambda data: pct(_ood_mean(data, "MatryoshkaKV, adaptive")["top1_agreement"], 0)})


def _and(values) -> str:
    return " and ".join(map(str, values))


@fact("whole-tokens-50")
def whole_tokens_50(data: Data) -> str:
    """Searched ranks at half the bytes: the whole-token setting with the lowest KL against none kept whole."""
    rows = [r for r in whole_token_rows(data) if r["target_budget"] == 0.5 and r["allocation"] == "adaptive"]
    passkey = data.result("retrieval_whole_tokens.json")[1]
    if passkey is not None:            # the setting the passkey was measured with, so that both speak of it
        measured = "{keep_first} + {keep_recent}".format(**passkey["methods"][0])
        rows = [r for r in rows if r["whole"] in ("0 + 0", measured)]
    plain, best = next(r for r in rows if r["whole"] == "0 + 0"), min(rows, key=lambda r: r["kl_to_base"])
    first, recent = best["whole"].split(" + ")
    text = (f"keeping the first {first} and the latest {recent} tokens whole as well, within the same bytes, takes "
            f"the KL from {plain['kl_to_base']:.2f} to {best['kl_to_base']:.2f}, the perplexity ratio from "
            f"{plain['perplexity_ratio']:.2f}x to {best['perplexity_ratio']:.2f}x and top-1 agreement from "
            f"{pct(plain['top1_agreement'], 0)} to {pct(best['top1_agreement'], 0)}")
    if passkey is None:
        return text
    rows = sorted(passkey["rows"], key=lambda r: r["length"])
    found = {k: _and(r["correct"] for r in rows if (r["allocation"], r["budget"]) == k) for k in
             [("adaptive", 0.5), ("adaptive", 0.375), ("uniform", 0.5)]}
    return (f"{text}; the passkey, with the same whole tokens, is found {found['adaptive', 0.5]} of {passkey['n']} "
            f"times at {_and(f'{int(n):,}' for n in sorted(passkey['base'], key=int))} tokens with searched ranks at "
            f"50% ({found['adaptive', 0.375]} at 37.5%), but only {found['uniform', 0.5]} with uniform ranks at 50%: "
            "fewer features per token cost retrieval there")


@fact("whole-searched-50")
def whole_searched_50(data: Data) -> str:
    """The whole-trained projections searched with the same tokens whole: suite and passkey at 50% and 37.5%."""
    suite, long = _record(data, "whole_kept_suite.json"), _record(data, "whole_kept_8k.json")
    rows = {r["target_budget"]: r for r in suite["rows"] if r["domain"] == "mean"}
    found = {b: _and(r["correct"] for r in sorted(suite["retrieval"]["rows"], key=lambda r: r["length"])
                     if r["budget"] == b) for b in (0.5, 0.375)}
    return (f"the KL falls to {rows[0.5]['kl_to_base']:.2f} at 50% and {rows[0.375]['kl_to_base']:.2f} at 37.5% "
            f"(perplexity {rows[0.5]['perplexity_ratio']:.2f}x and {rows[0.375]['perplexity_ratio']:.2f}x, top-1 "
            f"agreement {pct(rows[0.5]['top1_agreement'], 0)} and {pct(rows[0.375]['top1_agreement'], 0)}), and the "
            f"passkey is found {found[0.5]} of {suite['retrieval']['n']} times at 1,024 and 4,096 tokens at 50% "
            f"({found[0.375]} at 37.5%; at 8,192 tokens {long['rows'][0]['correct']} of {long['n']} at 50%)")


@fact("whole-trained-50")
def whole_trained_50(data: Data) -> str:
    """Projections trained with tokens whole, in a cache that keeps them whole, at half the bytes: KL and passkey."""
    suite, long = _record(data, "whole_trained_suite.json"), _record(data, "whole_trained_8k.json")
    kl = {r["allocation"]: r["kl_to_base"] for r in suite["rows"] if r["domain"] == "mean" and r["target_budget"] == 0.5}
    found = {a: _and(r["correct"] for r in sorted(suite["retrieval"]["rows"], key=lambda r: r["length"])
                     if r["allocation"] == a and r["budget"] == 0.5) for a in ("adaptive", "uniform")}
    far = {r["allocation"]: r["correct"] for r in long["rows"]}
    return (f"the KL at 50% falls to {kl['adaptive']:.2f} with searched ranks and {kl['uniform']:.2f} with uniform "
            f"ones, and the passkey is found {found['adaptive']} of {suite['retrieval']['n']} times at 1,024 and 4,096 "
            f"tokens with searched ranks ({found['uniform']} with uniform ones; at 8,192 tokens {far['adaptive']} and "
            f"{far['uniform']} of {long['n']})")


@fact("accuracy-kept")
def accuracy_kept(data: Data) -> str:
    """lm-eval: the average accuracy kept, and kept above chance, by the shipped trained projections (uniform and
    searched ranks) and PCA at each compressed budget of the sweep."""
    results = report.named(report.load_results(data.dir / "results" / "lm_eval_smollm2.csv"))
    table, items = report.summary(results), sorted(set(results["items"]))
    names = {"MatryoshkaKV trained, uniform ranks": "trained, uniform",
             "MatryoshkaKV trained, searched ranks": "trained, searched", "PCA, uniform ranks": "PCA"}
    parts = [f"at {budget} " + ", ".join(f"{w} {at.loc[n, '% kept']:.1f}% ({at.loc[n, '% kept above chance']:.1f}%)"
                                         for n, w in names.items() if n in at.index)
             for budget in dict.fromkeys(table.index.get_level_values("budget")) if budget != "100%"
             for at in [table.xs(budget, level="budget")]]
    return (f"of the uncompressed model's average accuracy on piqa, arc_easy and hellaswag ({items[-1]:,} items "
            f"each; in brackets: of its margin over chance) the projections keep " + "; ".join(parts))


@fact("passkey-positions-50")
def passkey_positions_50(data: Data) -> str:
    """Passkey with the shipped projections: searched and uniform ranks at 50% and at 75%, each prompt length."""
    rec = _record(data, "positions.json")
    cells = {(p["method"], p["budget"], p["length"]): p for p in rec["passkey"]}
    lengths = sorted({p["length"] for p in rec["passkey"]})
    found = {(a, b): _and(cells[(f"MatryoshkaKV (shipped), {a}", b, k)]["correct"] for k in lengths)
             for a in ("adaptive", "uniform") for b in (0.5, 0.75)}
    return (f"at 50% {found['adaptive', 0.5]} of {cells[('MatryoshkaKV (shipped), uniform', 0.5, lengths[0])]['n']} "
            f"times at {_and(f'{k:,}' for k in lengths)} tokens with searched ranks and {found['uniform', 0.5]} with "
            f"uniform ones; at 75% {found['uniform', 0.75]} with uniform ranks and {found['adaptive', 0.75]} with "
            f"searched ones (uncompressed: {_and(rec['passkey_base'][str(k)]['correct'] for k in lengths)})")


@fact("answers-survive")
def answers_survive(data: Data) -> str:
    """How many factual prompts keep the uncompressed model's answer, by budget, searched ranks."""
    rec = _record(data, "answers.json")
    kept, n = survival_by_budget([r for r in rec["rows"] if r["allocation"] == "adaptive"]), len(rec["prompts"])
    return (f"with searched ranks the trained projections keep the uncompressed answer of {kept[0.875] * n:.0f} of "
            f"{n} short factual prompts at 87.5% of the features, {kept[0.75] * n:.0f} at 75% and "
            f"{kept[0.5] * n:.0f} at 50%")


@fact("capitals-kept")
def capitals_kept(data: Data) -> str:
    """Capitals the uncompressed model knows, kept by searched ranks at 75% and 50%; after a passage, at 50% of
    the bytes with and without tokens kept whole."""
    def cells(rec):
        return {(c["whole"], c["budget"]): c for c in kept_facts(rec["rows"]) if c["allocation"] == "adaptive"}
    alone = cells(_record(data, "facts_capitals.json"))
    text = (f"of the {alone[('', 0.5)]['known']} capitals of the World Factbook's countries that the uncompressed "
            f"model names, {alone[('', 0.75)]['kept']} at 75% and {alone[('', 0.5)]['kept']} at 50%")
    if (rec := data.result("facts_capitals_context.json")[1]) is None:
        return text
    after = cells(rec)
    plain, kept = after[("0+0", 0.5)], after[(f"{rec['keep_first']}+{rec['keep_recent']}", 0.5)]
    return (text + f"; asked after a {rec['context']}-token passage, {plain['kept']} of {plain['known']} at 50% of the "
            f"bytes, and {kept['kept']} when the first {rec['keep_first']} and latest {rec['keep_recent']} tokens "
            "are kept whole within the same bytes")


@fact("readme-example-answers")
def readme_example_answers(data: Data) -> str:
    """What the README's example prints for 'The capital of France is' (uniform ranks), each on one line."""
    said = {r["budget"]: {k: " ".join(r[k].split()) for k in ("uncompressed", "compressed")}
            for r in _record(data, "answers.json")["rows"]
            if r["allocation"] == "uniform" and r["prompt"] == "The capital of France is"}
    return (f'the uncompressed model continues "{said[0.75]["uncompressed"]}", the 75% cache '
            f'"{said[0.75]["compressed"]}" and the 50% cache "{said[0.5]["compressed"]}"')


@fact("climb-gpu")
def climb_gpu(data: Data) -> str:
    """The CPU climb's measured rate and the KL its trend gives at the GPU run's tokens (the README's GPU path)."""
    rec = _record(data, "climb.json")
    run, t = rec["run"], rec["trends"]["0.5"]
    return (f"{run['hardware']['processes']} CPU processes through accelerate trained the shipped projections on "
            f"{run['tokens_seen']:,} more tokens in {run['wall_time_s'] / 60:.0f} minutes "
            f"({run['tokens_seen'] / run['wall_time_s']:.0f} tokens/s) and moved the out-of-domain KL at 50% by "
            f"{t['per_doubling']:+.3f} nats per doubling of the tokens trained; carried to {t['at_tokens']:,} tokens "
            f"that line gives {t['extrapolated']:.2f}")


@fact("whole-window-128")
def whole_window_128(data: Data) -> str:
    """The passkey at the model's whole window with the first 4 and latest 128 tokens whole, at half the bytes:
    uniform ranks and the best of the searches made for that cache."""
    _record(data, "retrieval_8k_whole128.json")                      # a clear error when it is not committed
    rec, *more = window_128_records(data)
    uniform = next(r["correct"] for r in rec["rows"] if r["allocation"] == "uniform")
    searched = max(r["correct"] for x in (rec, *more) for r in x["rows"] if r["allocation"] == "adaptive")
    return (f"at the model's whole window ({max(rec['lengths']):,} tokens) with the first 4 and the latest 128 tokens "
            f"whole at 50% of the bytes, the passkey is found {uniform} of {rec['n']} times with uniform ranks and "
            f"{searched} with the best of the ranks searched for that cache (uncompressed: "
            f"{rec['base_rows'][str(max(rec['lengths']))]['correct']})")


@fact("whole-window-128-suite")
def whole_window_128_suite(data: Data) -> str:
    """The suite on 2,048-token blocks with 4 + 128 whole at 50% of the bytes: the ranks searched for that cache on
    2,048-token blocks, beside uniform ranks."""
    rows = [r for name in WINDOW_128_SUITES for r in _record(data, name)["rows"]
            if r["domain"] == "mean" and r["target_budget"] == 0.5 and r["keep_recent"] == 128]
    uniform = next(r for r in rows if r["allocation"] == "uniform")
    best = min((r for r in rows if r["allocation"] == "adaptive"), key=lambda r: r["kl_to_base"])
    return (f"on the suite in 2,048-token blocks with that window the best of those searches brings the KL at 50% to "
            f"{best['kl_to_base']:.2f} (perplexity {best['perplexity_ratio']:.2f}x, top-1 agreement "
            f"{best['top1_agreement']:.0%}; uniform ranks {uniform['kl_to_base']:.2f})")
