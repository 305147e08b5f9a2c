"""The out-of-domain evaluation suite: compressed attention judged on text that no training or calibration reads.

Domains (:data:`DOMAINS`): the held-out part of each ``training/`` file (``books-heldout``, ...; the last 5% of
its documents, see :mod:`mkvlib.corpora`), tinyshakespeare, WikiText-2 test and Python's documentation test
part. :func:`mkvlib.corpora.check_not_heldout` keeps all of them out of training and calibration. Per domain
and rank setting the suite reports the perplexity ratio to the uncompressed model and the KL to it
(:func:`mkvlib.metrics.quality_curve`), then their means over domains (rows with ``domain == "mean"``).

    blocks = suite_blocks(tokenizer)                                   # {domain: (n_blocks, 512) LongTensor}
    rows = compare_suite(model, [Method("PCA uniform", "pca"),
                                 Method("trained adaptive", "trained", "adaptive")], [0.5, 0.375], blocks)
    print(format_suite_table(rows))
"""
from __future__ import annotations

from pathlib import Path

import torch

from .core.compress import attach
from .corpora import CorpusNotFoundError, load_text, token_blocks
from .metrics import quality_curve
from .core.projections import resolve_projections
from .core.ranks import Method, stored_fraction
from .runtime import note as announce, pick
from .core.env import progress_bar as tqdm

SUITES = ("ood",)
DOMAINS = ("books-heldout", "stackexchange-heldout", "factbook-heldout", "peps-heldout", "rfcs-heldout",
           "shakespeare", "wikitext2-test", "pydoc-test")
DEFAULT_SEQ_LEN = 512
IN_DOMAIN_SKIP = 1 << 20   # in-domain text starts this many tokens into the training mixture: past every run's tokens
IN_DOMAIN_SEED = 7


def default_tokens() -> int:
    """Tokens per domain: 4096, or 512 in fast mode."""
    return pick(512, 4096)


def available_domains(domains=DOMAINS, note: bool = True) -> list[str]:
    """The ``domains`` whose text can be found here, in order; the missing ones are skipped with one note."""
    present, missing = [], []
    for domain in domains:
        try:
            load_text(domain)
            present.append(domain)
        except CorpusNotFoundError:
            missing.append(domain)
    if missing and note:
        announce(f"note: the out-of-domain suite skips {', '.join(missing)} (not found; set MKV_DATA_DIR to the "
             "shared data folder for every domain)")
    return present


def suite_blocks(tokenizer, tokens_per_domain: int | None = None, seq_len: int = DEFAULT_SEQ_LEN,
                 domains=DOMAINS) -> dict[str, torch.Tensor]:
    """{domain: LongTensor (n_blocks, seq_len)}: the first ``tokens_per_domain`` tokens (default
    :func:`default_tokens`) of each available domain, in whole blocks. A domain shorter than one block is
    skipped with a note."""
    tokens = tokens_per_domain or default_tokens()
    if tokens < seq_len:
        raise ValueError(f"tokens per domain ({tokens}) must be at least seq_len ({seq_len})")
    out = {}
    for domain in available_domains(domains):
        try:
            out[domain] = token_blocks(tokenizer, domain, seq_len, tokens)
        except ValueError as err:
            announce(f"note: the out-of-domain suite skips {domain}: {err}")
    if not out:
        raise ValueError("no domain of the out-of-domain suite is available: set MKV_DATA_DIR to the shared data "
                         "folder (pydoc-test needs nothing but Python)")
    return out


MEAN_KEYS = ("perplexity_ratio", "kl_to_base", "top1_agreement")


def evaluate_suite(model, compression, settings: list, blocks_by_domain: dict, batch_size: int = 4,
                   progress: bool = False) -> list[dict]:
    """Rows per (domain, setting) from :func:`mkvlib.metrics.quality_curve`, then one ``mean`` row per setting.

    ``compression``: an attached :class:`~mkvlib.core.compress.Compression`; ``settings``: rank specs (budgets, ints or
    (L, G, 2) tensors); ``blocks_by_domain``: {domain: LongTensor (n_blocks, seq_len)}, e.g. :func:`suite_blocks`.
    Each row: domain, setting (index), budget, kv_fraction, perplexity, base_perplexity, perplexity_ratio,
    kl_to_base, top1_agreement, tokens. A mean row averages perplexity_ratio, kl_to_base and top1_agreement over
    the domains (each domain weighs the same) and sums tokens.
    """
    if not blocks_by_domain:
        raise ValueError("evaluate_suite needs at least one domain of blocks")
    rows = []
    for domain, blocks in tqdm(blocks_by_domain.items(), desc="suite", disable=not progress):
        for i, row in enumerate(quality_curve(model, blocks, compression, settings, batch_size, progress=False)):
            rows.append(dict(row, domain=domain, setting=i))
    for i in range(len(settings)):
        mine = [r for r in rows if r["setting"] == i]
        mean = {k: sum(r[k] for r in mine) / len(mine) for k in MEAN_KEYS}
        rows.append(dict(mean, domain="mean", setting=i, budget=mine[0]["budget"], kv_fraction=mine[0]["kv_fraction"],
                         tokens=sum(r["tokens"] for r in mine), domains=len(mine)))
    return rows


RECIPES = {"pca": "PCA", "trained": "MatryoshkaKV"}


def suite_label(projections: str) -> str:
    """A method's name in suite tables: the recipe of a shipped name ('trained' is MatryoshkaKV), a file's stem."""
    return RECIPES.get(projections, Path(projections).stem if projections.endswith(".safetensors") else projections)


def as_method(method) -> Method:
    """A :class:`~mkvlib.core.ranks.Method` from itself or a tuple (name, projections[, allocation[, trajectory]])."""
    return method if isinstance(method, Method) else Method(*method)


def compare_suite(model, methods, budgets, blocks_by_domain: dict, batch_size: int = 4,
                  progress: bool = False) -> list[dict]:
    """:func:`evaluate_suite` for each method at each budget: rows gain method, allocation, projections (the
    fingerprint) and target_budget (the budget asked for; ``budget`` is the one the ranks reach). A method that
    keeps tokens whole reads each budget as stored bytes at the blocks' length, and its rows gain keep_first,
    keep_recent and stored_fraction."""
    budgets = list(budgets)
    tokens = next(iter(blocks_by_domain.values())).shape[1]
    rows = []
    for method in map(as_method, methods):
        proj = resolve_projections(method.projections, model)
        settings = [method.ranks(model, proj, method.feature_budget(b, tokens)) for b in budgets]
        with attach(model, proj, settings[0], keep_first=method.keep_first, keep_recent=method.keep_recent) as comp:
            for row in evaluate_suite(model, comp, settings, blocks_by_domain, batch_size, progress):
                whole = {} if not (method.keep_first or method.keep_recent) else dict(
                    keep_first=method.keep_first, keep_recent=method.keep_recent,
                    stored_fraction=stored_fraction(row["budget"], tokens, method.keep_first, method.keep_recent))
                rows.append(dict(row, method=method.name, allocation=method.allocation, **whole,
                                 projections=proj.fingerprint(), target_budget=budgets[row["setting"]]))
    return rows


def format_suite_table(rows: list[dict]) -> str:
    """A text table per method: one line per domain (and the mean), perplexity ratio, KL (nats per token) and
    top-1 agreement with the uncompressed model per budget."""
    lines = []
    methods = list(dict.fromkeys(r.get("method", "") for r in rows))
    for method in methods:
        mine = [r for r in rows if r.get("method", "") == method]
        settings = sorted({r["setting"] for r in mine})
        domains = list(dict.fromkeys(r["domain"] for r in mine))
        cell = {(r["domain"], r["setting"]): r for r in mine}
        budgets = [cell[("mean", s)].get("target_budget", cell[("mean", s)]["budget"]) for s in settings]
        if method:
            lines.append(method)
        lines.append(f"{'':<22} {'':>8}" + "".join(f"  {f'budget {b:.3f}':>22}" for b in budgets))
        lines.append(f"{'domain':<22} {'base ppl':>8}" + "".join(f"  {'ppl x':>7} {'KL':>7} {'top-1':>6}"
                                                                 for _ in budgets))
        for domain in domains:
            base = cell[(domain, settings[0])].get("base_perplexity")
            text = f"{domain:<22} {base:>8.2f}" if base is not None else f"{domain:<22} {'':>8}"
            for s in settings:
                r = cell[(domain, s)]
                kl = r["kl_to_base"] if abs(r["kl_to_base"]) >= 5e-5 else 0.0     # no "-0.0000" from rounding
                text += f"  {r['perplexity_ratio']:>7.3f} {kl:>7.4f} {r['top1_agreement']:>6.1%}"
            lines.append(text)
        lines.append("")
    return "\n".join(lines).rstrip()


# --- reading suite rows ------------------------------------------------------------------------------------------
def suite_cell(rows: list, method: str, budget: float, domain: str = "mean") -> dict:
    """The suite row of ``method`` at target ``budget`` on ``domain`` ('mean', 'in-domain' or a domain name)."""
    for r in rows:
        if r["method"] == method and r["domain"] == domain and abs(r.get("target_budget", r["budget"]) - budget) < 1e-9:
            return r
    have = sorted({(r["method"], r["domain"]) for r in rows})
    raise KeyError(f"no suite row for {method!r} on {domain!r} at budget {budget}; rows hold {have}")


def gap_rows(record: dict, budget: float = 0.5) -> list[dict]:
    """Per method of a suite record: KL and perplexity ratio out of domain (the mean row) and in domain at
    ``budget``, and ``kl_gap`` = out-of-domain KL / in-domain KL (None without an in-domain row)."""
    out = []
    for method in (m["label"] for m in record["methods"]):
        ood = suite_cell(record["rows"], method, budget)
        try:
            ind = suite_cell(record["rows"], method, budget, "in-domain")
        except KeyError:
            ind = None
        out.append({"method": method, "ood_kl": ood["kl_to_base"], "ood_ppl_ratio": ood["perplexity_ratio"],
                    "in_domain_kl": ind and ind["kl_to_base"], "in_domain_ppl_ratio": ind and ind["perplexity_ratio"],
                    "kl_gap": ind and ood["kl_to_base"] / ind["kl_to_base"]})
    return out


def suite_curves(rows: list, domain: str = "mean") -> dict:
    """{method: rows of ``domain`` ordered by falling budget}: curves for :func:`mkvlib.plots.quality_vs_budget`."""
    curves: dict = {}
    for r in rows:
        if r["domain"] == domain:
            curves.setdefault(r["method"], []).append(r)
    return {m: sorted(rs, key=lambda r: -r["budget"]) for m, rs in curves.items()}
