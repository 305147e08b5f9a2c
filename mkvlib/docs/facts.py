"""Single numbers from the data, for sentences: ``<!-- generated: NAME -->95.1%<!-- /generated -->``.

A fact is a function ``fn(data) -> str`` registered with :func:`fact`; README.md (or any docs/*.md) can then
quote it inline, and ``python -m mkvlib.docs --check`` fails when the number in the text differs from the data.
Add one the same way as the examples below: compute it with the same helpers the tables use.
"""
from __future__ import annotations

from .markdown import pct
from .records import Data

FACTS: dict = {}


def fact(name: str):
    def register(fn):
        if name in FACTS:
            raise ValueError(f"a fact named {name!r} is already registered")
        FACTS[name] = fn
        return fn
    return register


def _best_kept(data: Data, budget: float) -> tuple[str, float]:
    """(set-up, % kept) of the set-up that keeps the largest share of the uncompressed average at ``budget``."""
    from ..lmeval.report import kept_at
    from .results import lm_eval_cells

    cells, _ = lm_eval_cells(data)
    kept = kept_at(cells, (budget,))[("kept", budget)].dropna()
    best = kept.sort_values(ascending=False, kind="stable").index[0]
    return best, float(kept[best])


@fact("lm-eval-items-per-task")
def lm_eval_items(data: Data) -> str:
    from .results import lm_eval_cells

    cells, _ = lm_eval_cells(data)
    return f"{int(cells['items'].max()):,}"


@fact("lm-eval-best-kept-50")
def best_kept_50(data: Data) -> str:
    return f"{_best_kept(data, 0.5)[1]:.1f}%"


@fact("lm-eval-best-setup-50")
def best_setup_50(data: Data) -> str:
    return _best_kept(data, 0.5)[0]


@fact("lm-eval-best-kept-37.5")
def best_kept_375(data: Data) -> str:
    return f"{_best_kept(data, 0.375)[1]:.1f}%"


@fact("lora-full-split-kept-50")
def lora_full_split_kept_50(data: Data) -> str:
    """The committed two-stage bundle at 50% on the whole ARC-Easy test split (rows with no item limit)."""
    from ..lora.accuracy import UNCOMPRESSED, read_rows

    rows = [r for r in read_rows(data.results / "lora_arc_easy.csv") if not r["limit"]]
    base = {r["adapter"]: r["acc"] for r in rows if r["projections"] == UNCOMPRESSED}
    at = [r for r in rows if r["budget"] == 0.5 and r["adapter"] in base and data.bundle_with_adapter(r["adapter"])]
    return pct(at[-1]["acc"] / base[at[-1]["adapter"]])


def _ood_mean(data: Data, method: str, budget: float, key: str) -> float:
    from .records import read_json

    rec = read_json(data.results / "ood_suite.json")
    return next(r[key] for r in rec["rows"] if r["method"] == method and r["domain"] == "mean"
                and r["target_budget"] == budget)


@fact("ood-best-ppl-50")
def ood_best_ppl_50(data: Data) -> str:
    """'2.05x perplexity and a KL of 0.61': trained projections, searched ranks, 50%, out-of-domain mean."""
    m = "MatryoshkaKV, adaptive"
    return f"{_ood_mean(data, m, 0.5, 'perplexity_ratio'):.2f}x perplexity and a KL of {_ood_mean(data, m, 0.5, 'kl_to_base'):.2f}"


@fact("ood-pca-ppl-50")
def ood_pca_ppl_50(data: Data) -> str:
    m = "PCA, uniform"
    return f"{_ood_mean(data, m, 0.5, 'perplexity_ratio'):.2f}x and {_ood_mean(data, m, 0.5, 'kl_to_base'):.2f}"


def _passkey_lengths(data: Data) -> tuple[dict, list]:
    """({(method, fraction, length): row}, methods) of the committed passkey-by-length table."""
    _, rec = data.result("compare_passkey_lengths.json")
    if rec is None:
        raise KeyError("compare_passkey_lengths.json is not committed")
    cells = {(r["method"], r["fraction"], r["length"]): r for r in rec["rows"] if r["task"] == "passkey" and r["n"]}
    return cells, rec["methods"]


@fact("passkey-lengths-50")
def passkey_lengths_50(data: Data) -> str:
    """The ranks shipped with the projections trained from position 0, at 50%, against recall-calibrated ones,
    shortest and longest length measured (compare_passkey_lengths.json predates spread positions)."""
    cells, methods = _passkey_lengths(data)
    shipped, recall = methods[1], methods[2]
    lengths = sorted({k[2] for k in cells})
    lo, hi = lengths[0], lengths[-1]
    worst = max(cells[(shipped, 0.5, n)]["correct"] for n in lengths)
    n = cells[(shipped, 0.5, lo)]["n"]
    return (f"{worst} of {n} passkeys at every length from {lo:,} to {hi:,} tokens (uncompressed: "
            f"{min(cells[('uncompressed', 1.0, m)]['correct'] for m in lengths)} of {n}); ranks searched on recall "
            f"blocks find {cells[(recall, 0.5, lo)]['correct']} of {n} at {lo:,} but "
            f"{cells[(recall, 0.5, hi)]['correct']} at {hi:,}")


def _positions(data: Data) -> dict:
    _, rec = data.result("positions.json")
    if rec is None:
        raise KeyError("positions.json is not committed")
    return rec


@fact("positions-late-50")
def positions_late_50(data: Data) -> str:
    """KL at 50% uniform with the text at the start of the window and at its end: trained from position 0
    against the shipped projections (trained on spread positions)."""
    rec = _positions(data)
    kl = {(r["method"], r["offset"]): r["kl_to_base"] for r in rec["rows"]}
    first = rec["offsets"][0]
    prev, new = "trained from position 0", "MatryoshkaKV (shipped)"
    worst = lambda m: max(v for (mm, _), v in kl.items() if mm == m)   # noqa: E731
    return (f"projections trained on blocks from position 0 go from a KL of {kl[(prev, first)]:.2f} "
            f"to {worst(prev):.2f} (uniform 50%), the shipped ones, trained on blocks spread over the window, stay "
            f"between {min(v for (m, _), v in kl.items() if m == new):.2f} and {worst(new):.2f}")


def _passkey_cells(rec: dict) -> tuple[dict, list]:
    """({(method, budget, length): row}, prompt lengths) of a positions record's passkey table."""
    return ({(p["method"], p["budget"], p["length"]): p for p in rec["passkey"]},
            sorted({p["length"] for p in rec["passkey"]}))


@fact("passkey-positions-50")
def passkey_positions_50(data: Data) -> str:
    """Passkey with the shipped projections: searched and uniform ranks at 50% and at 75%, each prompt length."""
    rec = _positions(data)
    cells, lengths = _passkey_cells(rec)
    adaptive, uniform = "MatryoshkaKV (shipped), adaptive", "MatryoshkaKV (shipped), uniform"
    n = cells[(uniform, 0.5, lengths[0])]["n"]

    def found(method, budget):
        return " and ".join(str(cells[(method, budget, k)]["correct"]) for k in lengths)
    where = " and ".join(f"{k:,}" for k in lengths)
    base = " and ".join(str(rec["passkey_base"][str(k)]["correct"]) for k in lengths)
    return (f"at 50% {found(adaptive, 0.5)} of {n} times at {where} tokens with searched ranks and "
            f"{found(uniform, 0.5)} with uniform ones; at 75% {found(uniform, 0.75)} with uniform ranks and "
            f"{found(adaptive, 0.75)} with searched ones (uncompressed: {base})")


@fact("passkey-no-recall-50")
def passkey_no_recall_50(data: Data) -> str:
    """Passkey at 50% uniform with the projections of the same route before its recall-block stage."""
    cells, lengths = _passkey_cells(_positions(data))
    rows = [cells[("spread positions, no recall blocks, uniform", 0.5, k)] for k in lengths]
    return f"{' and '.join(str(r['correct']) for r in rows)} of {rows[0]['n']} (uniform ranks at 50%)"


@fact("answers-survive")
def answers_survive(data: Data) -> str:
    """How many of the factual prompts keep the uncompressed model's answer, by budget, searched ranks
    (data/results/answers.json, mkvlib.answers)."""
    from ..answers import survival_by_budget

    _, rec = data.result("answers.json")
    if rec is None:
        raise KeyError("answers.json is not committed")
    rows = [r for r in rec["rows"] if r["allocation"] == "adaptive"]
    kept, n = survival_by_budget(rows), len(rec["prompts"])
    return (f"with searched ranks the trained projections keep the uncompressed answer of {kept[0.875] * n:.0f} of "
            f"{n} short factual prompts at 87.5% of the features, {kept[0.75] * n:.0f} at 75% and "
            f"{kept[0.5] * n:.0f} at 50%")


@fact("readme-example-answers")
def readme_example_answers(data: Data) -> str:
    """What the README's example prints for 'The capital of France is' (uniform ranks, answers.json)."""
    _, rec = data.result("answers.json")
    if rec is None:
        raise KeyError("answers.json is not committed")
    rows = {r["budget"]: r for r in rec["rows"] if r["allocation"] == "uniform"
            and r["prompt"] == "The capital of France is"}
    first = lambda text: " ".join(text.split())           # noqa: E731 - one line, as the example prints it
    return (f'the uncompressed model continues "{first(rows[0.75]["uncompressed"])}", the 75% cache '
            f'"{first(rows[0.75]["compressed"])}" and the 50% cache "{first(rows[0.5]["compressed"])}"')


@fact("ood-top1-50")
def ood_top1_50(data: Data) -> str:
    """Top-1 agreement at 50%, trained projections with searched ranks, out-of-domain mean."""
    return pct(_ood_mean(data, "MatryoshkaKV, adaptive", 0.5, "top1_agreement"), 0)
