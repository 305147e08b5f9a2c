"""Results sections for the out-of-domain yardstick: the suite, passkey retrieval, positions in the window, answers
and facts, the training routes and the ceiling of fixed projections (each file records its command)."""
from __future__ import annotations

import functools
from collections import Counter
from operator import itemgetter

from ..answers import kept_facts
from ..core.ranks import budget_for_bytes
from ..lmeval.recipes import UNSHIPPED_DETAILS, shipped_fingerprint
from ..retrieval import passkey_setting, score_answer
from .accuracy import projections_recipe
from .markdown import bullets, code, count, either, num, paragraphs, pct, table
from ..ceiling import ORACLE, ORACLE_UNCENTRED, SHIPPED_LABELS as CEILING_SHIPPED
from .records import Data, by_int
from .results import commands_line, prose, section, source_line

CEILING_METRICS = {"kl_to_base": "KL", "perplexity_ratio": "ppl x", "top1_agreement": "top-1"}


def _triple(r: dict | None, kl_first: bool = False) -> str:
    """'ppl x / KL / top-1' of a suite row (KL first for the ceiling); '-' when there is none."""
    if r is None:
        return "-"
    ppl, kl, top1 = num(r["perplexity_ratio"], 2), num(r["kl_to_base"], 3), pct(r["top1_agreement"], 0)
    return f"{kl} / {ppl} / {top1}" if kl_first else f"{ppl} / {kl} / {top1}"


def _kl(r: dict | None) -> str:
    return either(lambda r: num(r["kl_to_base"], 3), r)


def _suite(rec: dict) -> dict:
    """The fields of a suite's prose: its record, the number of domains and their names."""
    return dict(rec, n=len(rec["domains"]), domains=", ".join(rec["domains"]))


def _counted(r: dict | None) -> str:
    return either(lambda r: count(r["correct"], r["n"]), r)


def _ranks(allocation: str) -> str:
    """How the prose names an allocation: 'uniform' or 'searched' ranks."""
    return "uniform" if allocation == "uniform" else "searched"


def _budget_cells(suite: dict, recent: int = 0, domain: str = "mean", projections: str | None = None) -> dict:
    """{(allocation, bytes asked): suite row} of ``domain``'s rows with ``recent`` latest tokens whole (0: none),
    of the projections with that fingerprint only when ``projections`` is given."""
    return {(r["allocation"], r["target_budget"]): r for r in suite["rows"]
            if r["domain"] == domain and r.get("keep_recent", 0) == recent
            and projections in (None, r["projections"])}


@section("ood-suite", "Out of domain: perplexity ratio and KL to the uncompressed model", result="ood_suite.json")
def ood_suite(data: Data, path, rec) -> str:
    cell = {(r["method"], r["target_budget"], r["domain"]): r for r in rec["rows"]}
    rows = [[m] + [_triple(cell.get((m, b, "mean"))) for b in rec["budgets"]] + [_kl(cell.get((m, 0.5, "in-domain")))]
            for m in [x["label"] for x in rec["methods"]]]
    return paragraphs(prose("ood-suite", _suite(rec)), table(
        ["method"] + [f"{pct(b)}: ppl x / KL / top-1" for b in rec["budgets"]] + ["in-domain KL at 50%"], rows))


@section("ood-suite-domains", "Out of domain at 50%, per domain", result="ood_suite.json")
def ood_suite_domains(data: Data, path, rec) -> str:
    methods = [x["label"] for x in rec["methods"]]
    cell = {(r["method"], r["domain"]): r for r in rec["rows"] if r["target_budget"] == 0.5}
    rows = [[d, num(cell[(methods[0], d)]["base_perplexity"], 2)] +
            [f"{num(cell[(m, d)]['perplexity_ratio'], 2)} / {num(cell[(m, d)]['kl_to_base'], 3)}" for m in methods]
            for d in rec["domains"] + ["in-domain"] if (methods[0], d) in cell]
    return paragraphs("Perplexity ratio / KL at a 50% budget.", table(["domain", "uncompressed ppl", *methods], rows))


WHOLE_TOKEN_WINDOWS = ("whole_tokens_sinks.json", "whole_tokens_recent64.json")   # more windows, same suite


def whole_token_rows(data: Data, domain: str = "mean") -> list[dict]:
    """The trained projections' suite rows at equal bytes, from ood_suite.json (none kept whole), whole_tokens.json
    and the files of :data:`WHOLE_TOKEN_WINDOWS` (where committed), each with ``whole`` = 'F + W' (first and latest
    tokens kept whole)."""
    budgets = set(data.result("whole_tokens.json")[1]["budgets"])
    rows = [dict(r, whole=f"{r.get('keep_first', 0)} + {r.get('keep_recent', 0)}",
                 stored=r.get("stored_fraction", r["budget"]))
            for name in ("ood_suite.json", "whole_tokens.json", *WHOLE_TOKEN_WINDOWS)
            for r in (data.result(name)[1] or {}).get("rows", [])
            if r["domain"] == domain and r["method"].startswith("MatryoshkaKV") and r["target_budget"] in budgets]
    return sorted(rows, key=lambda r: (-r["target_budget"], r["allocation"], r.get("keep_recent", 0),
                                       r.get("keep_first", 0)))


def _whole_windows(rows: list[dict]) -> str:
    """The KL at each budget and allocation as the whole tokens grow, and what the first tokens alone and each wider
    latest window do to it (computed from ``rows`` of :func:`whole_token_rows`)."""
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["target_budget"], r["allocation"]), {})[r["whole"]] = r
    moves = "; ".join(f"{_ranks(a)} {pct(b, None)}: " + ", ".join(f"{w} {_kl(r)}" for w, r in c.items())
                      for (b, a), c in cells.items())
    sinks = [(c["4 + 0"], c["0 + 0"]) for c in cells.values() if "4 + 0" in c and "0 + 0" in c]
    windows = [[r["kl_to_base"] for w, r in c.items() if w.startswith("4 + ") and w != "4 + 0"]
               for c in cells.values()]
    verdict = []
    if sinks:
        lower = [1 - alone["kl_to_base"] / none["kl_to_base"] for alone, none in sinks]
        free = [x for x, (alone, none) in zip(lower, sinks) if alone["budget"] == none["budget"]]
        verdict.append("The first 4 tokens alone lower the KL "
                       + (f"by at most {pct(max(lower), 0)}" if max(lower) > 0 else "nowhere measured")
                       + (", even where they take no feature from the other tokens (uniform ranks, rounded up): "
                          "compressing the attention sinks is not what costs." if free and max(free) < 0.01 else "."))
    if all(len(w) > 1 and all(x > y for x, y in zip(w, w[1:])) for w in windows if w):
        verdict.append("Each wider window of latest tokens lowers it further, at every budget and allocation: the "
                       "gain is the local context read whole.")
    return prose("whole-tokens.windows", moves=moves, verdict=" ".join(verdict))


@section("whole-tokens", "Keeping the first and the latest tokens whole, at equal bytes",
         *(f"results/{n}" for n in WHOLE_TOKEN_WINDOWS), "results/whole_searched_suite.json",
         "results/retrieval_whole_tokens.json", result="whole_tokens.json")
def whole_tokens(data: Data, path, rec) -> str | None:
    if data.result("ood_suite.json")[1] is None:
        return None
    key = itemgetter("target_budget", "allocation", "whole")
    inside = {key(r): r for r in whole_token_rows(data, "in-domain")}
    rows = [[pct(r["target_budget"]), r["allocation"], r["whole"], pct(r["stored"]), pct(r["budget"]), _triple(r),
             _kl(inside.get(key(r)))] for r in whole_token_rows(data)]
    windows = [rec for rec in (data.result(name)[1] for name in WHOLE_TOKEN_WINDOWS) if rec]
    return paragraphs(prose("whole-tokens", _suite(rec)),
                      table(["bytes asked", "ranks", "whole tokens (first + recent)", "bytes stored",
                             "features per token", "ppl x / KL / top-1", "in-domain KL"], rows),
                      _whole_windows(whole_token_rows(data)),
                      commands_line([r["command"] for r in windows]) if windows else "",
                      _whole_searched(data, rec))


def _whole_searched(data: Data, shipped: dict) -> str:
    """The shipped projections with ranks searched with the tokens whole against the shipped search, at equal bytes
    with the same tokens whole ('' without whole_searched_suite.json or the shipped passkey file)."""
    path, mine = data.result("whole_searched_suite.json")
    passkeys = data.result("retrieval_whole_tokens.json")[1]
    if mine is None or passkeys is None:
        return ""
    method, recent = mine["methods"][0], mine["methods"][0]["keep_recent"]
    return prose("whole-tokens.searched", method, source=code(data.rel(path)), command=code(mine["command"]),
                 moved=_whole_trained_moved(_side(shipped, recent, passkeys), _side(mine, recent, mine["retrieval"]),
                                            "whole-tokens.searched-moved"))


def _retrieval(data: Data, path, rec) -> str:
    """Correct answers per method, length and budget (a budget counts bytes, whole tokens included)."""
    cell = {(r["method"], r["budget"], r["length"]): r for r in rec["rows"]}
    rows = [[m, f"{n:,}"] + [_counted(cell.get((m, b, n))) for b in rec["budgets"]]
            + [either(pct, rec["fails_at_by_length"][m].get(str(n)), "holds at every budget measured")]
            for m in [x["label"] for x in rec["methods"]] for n in rec["lengths"]]
    base = " ".join(f"{int(k):,} tokens: {pct(v, 0)}." for k, v in by_int(rec["base"]))
    return paragraphs(prose("retrieval", rec, base=base),
                      table(["method", "length", *[pct(b) for b in rec["budgets"]],
                             "fails at (below 90% of uncompressed)"], rows))


def _margins(data: Data, path, rec) -> str | None:
    """Exact match, the key's log-probability and decoys given per method, budget and length."""
    if "base_rows" not in rec:
        return None
    order = {m["label"]: i for i, m in enumerate(rec["methods"])}
    base = [dict(rec["base_rows"][str(n)], method="uncompressed", budget=1, length=n) for n in sorted(rec["lengths"])]
    rows = [[r["method"], pct(r["budget"], None if r["budget"] == 1 else 1), f"{r['length']:,}", _counted(r),
             num(r["mean_key_logp"], 2), "-" if r.get("decoys") is None else f"{r['decoys']}/{r['n']}"]
            for r in base + sorted(rec["rows"], key=lambda r: (order[r["method"]], -r["budget"], r["length"]))]
    return paragraphs(prose("retrieval-varied" if rec.get("prompts") == "varied" else "retrieval-margins", rec,
                            lengths=", ".join(f"{n:,}" for n in sorted(rec["lengths"])),
                            window=" (the last, the model's whole window: its max_position_embeddings)"
                            if len(rec["lengths"]) > 1 else ", the model's whole window (its max_position_embeddings)",
                            wordings=len({w for ws in rec.get("wordings", {}).values() for w in ws}),
                            filler="; ".join(rec.get("filler_source", []))),
                      table(["method", "budget", "length", "exact match", "key log p", "decoy given"], rows))


for _name, _title, _render in (      # each reads data/results/<name with underscores>.json
        ("retrieval", "Passkey retrieval against budget", _retrieval),
        ("retrieval-whole-tokens", "Passkey retrieval with tokens kept whole, at equal bytes", _retrieval),
        ("retrieval-varied", "Retrieval with varied prompts: wordings, key lengths, a decoy, prose filler", _margins),
        ("retrieval-8k", "Passkey retrieval at the model's whole window, with the key's log-probability", _margins),
        ("retrieval-8k-whole", "The whole window with the first and latest tokens kept whole, at equal bytes",
         _margins),
):
    section(_name, _title, result=_name.replace("-", "_") + ".json")(_render)


def _found(rec: dict, row: dict, n: int) -> int:
    """Keys found among the first ``n`` prompts of a passkey row (prompt i has the seed ``seed * 1000 + i``; a row
    of ``n`` prompts needs no answers)."""
    if row["n"] == n:
        return row["correct"]
    return sum(score_answer(a, passkey_setting(rec["seed"] * 1000 + i)[0]) for i, a in enumerate(row["answers"][:n]))


@section("retrieval-whole-recent64", "Passkey with the first 4 and the latest 64 tokens kept whole, at equal bytes",
         "results/retrieval_whole_tokens.json", "results/retrieval_8k_whole.json",
         "results/retrieval_8k_recent128.json",
         result="retrieval_whole_recent64.json")
def retrieval_whole_recent64(data: Data, path, rec) -> str | None:
    """The passkey with a 64-token window beside the 32-token one on the same prompts (the first n of both)."""
    narrow = [r for name in ("retrieval_whole_tokens.json", "retrieval_8k_whole.json")
              if (r := data.result(name)[1]) is not None]
    cells = {(r["allocation"], r["budget"], r["length"]): (old, r) for old in narrow for r in old["rows"]}
    moves = []
    for r in sorted(rec["rows"], key=lambda r: (r["allocation"], r["length"])):
        if (pair := cells.get((r["allocation"], r["budget"], r["length"]))) is None:
            continue
        old, before = pair
        n = min(old["n"], rec["n"])
        moves.append(f"{_ranks(r['allocation'])} {pct(r['budget'], None)} at {r['length']:,} tokens "
                     f"{_found(old, before, n)} -> {_found(rec, r, n)} of {n}")
    return paragraphs(_margins(data, path, rec), prose("retrieval-whole-recent64", moves="; ".join(moves)),
                      _recent128(data, rec))


def _recent128(data: Data, recent64: dict) -> str:
    """The whole window with 4 + 128 whole, against 4 + 32 and 4 + 64 on the same prompts ('' without the files)."""
    path, wide = data.result("retrieval_8k_recent128.json")
    recent32 = data.result("retrieval_8k_whole.json")[1]
    if wide is None or recent32 is None:
        return ""
    n, length = wide["n"], max(wide["lengths"])
    windows = {32: recent32, 64: recent64, 128: wide}
    cells = {(w, r["allocation"]): _found(rec, r, n) for w, rec in windows.items() for r in rec["rows"]
             if r["length"] == length and r["budget"] == 0.5 and r["n"] >= n}
    counts = "; ".join(f"{_ranks(a)}: " + ", ".join(f"4 + {w} {cells[w, a]}" for w in windows if (w, a) in cells)
                       + f" of {n}" for a in dict.fromkeys(r["allocation"] for r in wide["rows"]))
    return prose("retrieval-whole-recent64.128", source=code(data.rel(path)), command=code(wide["command"]),
                 length=f"{length:,}", n=n, counts=counts)


WINDOW_128_SEARCHES = ("retrieval_8k_whole128min16.json", "retrieval_8k_whole128long.json")  # same prompts


def window_128_records(data: Data) -> list[dict]:
    """The passkey records at the whole window with 4 + 128 whole: retrieval_8k_whole128.json (uniform ranks and
    the first search), then those of :data:`WINDOW_128_SEARCHES` that are committed ([] without the first)."""
    first = data.result("retrieval_8k_whole128.json")[1]
    return [] if first is None else [first, *(r for n in WINDOW_128_SEARCHES if (r := data.result(n)[1]) is not None)]


def _search_name(data: Data, trajectory: str | None) -> str:
    """How a table names the ranks of ``trajectory``: uniform, or a search by the settings it records."""
    if trajectory is None:
        return "uniform"
    config = ((data.trajectories.get(trajectory) or {}).get("meta") or {}).get("config") or {}
    whole = f"{config.get('keep_first', 0)} + {config.get('keep_recent', 0)}"
    return ("searched, every token compressed" if whole == "0 + 0" else f"searched with {whole} whole") + (
        f", min rank {config['min_rank']}" if config.get("min_rank", 8) != 8 else "") + (
        f", {config['seq_len']:,}-token blocks" if config.get("seq_len", 1024) != 1024 else "")


@section("whole128", "The whole window with 4 + 128 whole and ranks searched for that window",
         "results/retrieval_8k_recent128.json", *(f"results/{n}" for n in WINDOW_128_SEARCHES),
         result="retrieval_8k_whole128.json")
def whole128(data: Data, path, rec) -> str | None:
    """The passkey at the whole window, the latest 128 tokens whole: ranks searched with that window read whole
    beside uniform ranks and the shipped search (its 6 prompts are the first of these)."""
    shipped = data.result("retrieval_8k_recent128.json")[1]
    if shipped is None:
        return None
    records = [rec, *window_128_records(data)[1:]]
    length, n = max(rec["lengths"]), shipped["n"]
    named = [(_search_name(data, m["trajectory"]), m["trajectory"], x, r) for x in (shipped, *records)
             for m in x["methods"] for r in x["rows"] if r["method"] == m["label"] and r["length"] == length
             and (x is not shipped or m["trajectory"])]          # its uniform row: the first n of this file's
    base = dict(rec["base_rows"][str(length)], method="uncompressed")
    rows = [[name, count(r["correct"], r["n"]) if r["n"] == rec["n"] else "-", f"{_found(x, r, n)}/{n}",
             num(r["mean_key_logp"], 2)] for name, _, x, r in [("uncompressed", None, rec, base), *named]]
    best = max((r["correct"], name) for name, _, x, r in named if r["n"] == rec["n"] and name != "uniform")
    commands = {f"{name}: " + code(data.trajectories[t]["meta"]["command"]): None for name, t, _, _ in named
                if t in data.trajectories and name.startswith("searched with")}
    return paragraphs(prose("whole128", rec, length=f"{length:,}", n6=n, stored=pct(rec["budgets"][0], None)),
                      table(["ranks", f"exact match, {rec['n']} prompts", f"the first {n}",
                             "mean key log p (its prompts)"], rows),
                      bullets(commands),
                      prose("whole128.met" if best[0] == rec["n"] else "whole128.short", found=best[0], n=rec["n"],
                            ranks=best[1], uniform=next(r["correct"] for name, _, x, r in named if x is rec
                                                        and name == "uniform")),
                      commands_line([r["command"] for r in records[1:]]) if records[1:] else "")


WINDOW_128_SUITES = ("whole128_suite.json", "whole128long_suite.json")     # the same suite on 2,048-token blocks


def _window_128_name(data: Data, method: dict, fingerprint: str) -> str:
    """How the 2,048-block section names a method's ranks (its projections have ``fingerprint``): uniform, the
    shipped search, or a search by the settings its trajectory records."""
    if method["allocation"] == "uniform":
        return "uniform"
    return _search_name(data, method["trajectory"] or data.default_trajectory(fingerprint))


def _fits_its_cache(cells: dict, budgets: list) -> str:
    """Which ranks are best with the window whole at every budget, and whether they are the worst without it
    (``cells``: {(ranks, (first, recent), budget): suite mean row})."""
    def ranked(recent: bool, b) -> list:
        return sorted((r["kl_to_base"], name) for (name, whole, at), r in cells.items()
                      if at == b and bool(whole[1]) == recent)
    best = {ranked(True, b)[0][1] for b in budgets}
    if len(best) != 1:
        return ""
    name = best.pop()
    worst = all(ranked(False, b)[-1][1] == name for b in budgets)
    return (f" Ranks {name} give the lowest KL with the window whole at every budget"
            + (", and the highest in the cache that keeps only the first 4 whole: a search fits the cache it scored"
               " its steps in." if worst else "."))


@section("whole128-blocks", "The 4 + 128 window on 2,048-token blocks: the suite, and the passkey at 1k and 4k",
         *(f"results/{n}" for n in WINDOW_128_SUITES[1:]), "results/retrieval_whole128long.json",
         result=WINDOW_128_SUITES[0])
def whole128_blocks(data: Data, path, rec) -> str | None:
    """The suite at 2,048-token blocks with 4 + 0 and 4 + 128 tokens whole (uniform ranks, the shipped search, the
    search made with 4 + 128 read whole on 2,048-token blocks), with the same ranks' passkey at 1,024 and 4,096
    tokens (4 + 128 whole, 50% of the bytes)."""
    suites = [r for n in WINDOW_128_SUITES if (r := data.result(n)[1]) is not None]
    passkey = data.result("retrieval_whole128long.json")[1]
    fingerprint = rec["methods"][0]["fingerprint"]
    found = {} if passkey is None else {
        (_window_128_name(data, m, fingerprint), r["length"]): r for m in passkey["methods"] for r in passkey["rows"]
        if r["method"] == m["label"] and r["budget"] == 0.5}
    lengths = sorted(passkey["lengths"]) if passkey else []
    kept = passkey["methods"][0] if passkey else {}              # its whole tokens: every passkey method's alike
    window = (kept.get("keep_first", 0), kept.get("keep_recent", 0))
    rows, cells = [], {}
    for suite in suites:
        for m in suite["methods"]:
            name, whole = _window_128_name(data, m, fingerprint), (m["keep_first"], m["keep_recent"])
            mine = {(r["domain"], r["target_budget"]): r for r in suite["rows"] if r["method"] == m["label"]}
            cells.update({(name, whole, b): mine["mean", b] for b in rec["budgets"]})
            rows.append([name, "{} + {}".format(*whole), *(_triple(mine.get(("mean", b))) for b in rec["budgets"]),
                         _kl(mine.get(("in-domain", 0.5)))]
                        + [_counted(found.get((name, n))) if m["keep_recent"] else "-" for n in lengths])
    moves = "; ".join(f"{name} {pct(b, None)}: {_kl(cells.get((name, (first, 0), b)))} -> {_kl(r)}"
                      for (name, (first, recent), b), r in cells.items() if recent)
    widest = max(sum(whole) for _name, whole, _budget in cells)
    fits = _fits_its_cache(cells, rec["budgets"])
    usual = data.result("ood_suite.json")[1]["seq_len"]
    return paragraphs(prose("whole128-blocks", _suite(rec), tokens=f"{rec['tokens_per_domain']:,}",
                            seq_len=f"{rec['seq_len']:,}", exact=pct(widest / rec["seq_len"], 1), widest=widest,
                            usual=f"{usual:,}", small=pct(widest / usual, 1),
                            features=", ".join(f"{pct(budget_for_bytes(0.5, n, *window), 1)} at {n:,} tokens"
                                               for n in lengths) or "-"),
                      table(["ranks", "whole tokens (first + recent)",
                             *(f"{pct(b)}: ppl x / KL / top-1" for b in rec["budgets"]), "in-domain KL at 50%",
                             *(f"passkey {n:,}, {window[0]} + {window[1]}, 50%" for n in lengths)], rows),
                      prose("whole128-blocks.moves", moves=moves, fits=fits),
                      commands_line(more) if (more := [s["command"] for s in suites[1:]]
                                              + ([passkey["command"]] if passkey else [])) else "")


SEARCH_SUITES = ("protected4_suite.json", "protected8_suite.json", "recall8k_suite.json")


def _suite_cells(data: Data, trajectory: str | None, shipped: bool) -> tuple[dict, dict]:
    """({budget: suite mean row}, {(budget, length): passkey row}) of the searched ranks along ``trajectory``: the
    shipped trajectory's rows of ood_suite.json and retrieval.json, or another search's own suite file (none:
    empty)."""
    if shipped:
        _, suite = data.result("ood_suite.json")
        _, passkey = data.result("retrieval.json")
        label = SHIPPED_SUITE_LABELS["adaptive"]
        return ({r["target_budget"]: r for r in (suite or {}).get("rows", []) if r["domain"] == "mean"
                 and r["method"] == label},
                {(r["budget"], r["length"]): r for r in (passkey or {}).get("rows", []) if r["method"] == label})
    for name in SEARCH_SUITES:
        _, rec = data.result(name)
        if rec and any(m.get("trajectory") == trajectory for m in rec["methods"]):
            return ({r["target_budget"]: r for r in rec["rows"] if r["domain"] == "mean"},
                    {(r["budget"], r["length"]): r for r in (rec.get("retrieval") or {}).get("rows", [])})
    return {}, {}


@section("retrieval-protected", "Ranks for the whole window: retrieval heads kept whole, long recall blocks",
         "results/retrieval_heads.json", *(f"results/{n}" for n in SEARCH_SUITES),
         result="retrieval_protected_8k.json")
def retrieval_protected(data: Data, path, rec) -> str | None:
    heads_path, heads = data.result("retrieval_heads.json")
    if heads is None:
        return None
    head_rows = [[i + 1, h["layer"], h["kv_head"], num(h["score"], 3)] for i, h in enumerate(heads["heads"][:8])]
    length, budget, lengths = max(rec["lengths"]), 0.5, (1024, 4096)
    cell = {r["method"]: r for r in rec["rows"] if r["length"] == length and r["budget"] == budget}
    base = rec["base_rows"][str(length)]
    shipped_label = SHIPPED_SUITE_LABELS["adaptive"]
    meta = {m["label"]: (data.trajectories.get(m["trajectory"]) or {}).get("meta", {}) for m in rec["methods"]}
    rows, found = [], {}
    for m in rec["methods"]:
        suite, passkey = _suite_cells(data, m["trajectory"], m["label"] == shipped_label)
        r = cell[m["label"]]
        found[m["label"]] = r["correct"]
        rows.append([m["label"], count(r["correct"], r["n"]), num(r["mean_key_logp"], 2)]
                    + [_triple(suite.get(b)) for b in (0.5, 0.375)]
                    + [_counted(passkey.get((0.375, n))) for n in lengths])
    shipped = found[shipped_label]
    better = [f"{m} ({k} of {rec['n']})" for m, k in found.items() if k > shipped]
    heads_better = any(k > shipped for m, k in found.items() if meta[m].get("protected"))
    depths = {True: set(), False: set()}
    for r in (r for r in cell.values() if r["correct"]):          # the rows that find any key
        for i, answer in enumerate(r["answers"]):
            key, depth = passkey_setting(rec["seed"] * 1000 + i)
            depths[score_answer(answer, key)].add(depth)
    apart = depths[False] and depths[True] and max(depths[False]) < min(depths[True])
    commands = [f"{label}: " + either(code, meta[label].get("command"), "command not recorded")
                for label in meta if label != shipped_label]
    return paragraphs(
        prose("retrieval-protected", heads, source=code(data.rel(heads_path)), heads_command=code(heads["command"]),
              lengths=", ".join(f"{n:,}" for n in heads["lengths"])),
        table(["rank", "layer", "KV head", "attention on the key"], head_rows),
        prose("retrieval-protected.table", length=f"{length:,}", base=count(base["correct"], rec["n"]),
              suites=", ".join(code(f"data/results/{n}") for n in SEARCH_SUITES)),
        bullets(commands),
        table(["searched ranks", f"passkey {length:,} at 50%", "key log p", "suite 50%: ppl x / KL / top-1",
               "suite 37.5%: ppl x / KL / top-1"] + [f"passkey {n:,} at 37.5%" for n in lengths], rows),
        prose("retrieval-protected.better", better="; ".join(better), shipped=shipped, n=rec["n"]) if better
        else prose("retrieval-protected.none"),
        "" if heads_better else prose("retrieval-protected.heads"),
        prose("retrieval-protected.depths" if apart else "retrieval-protected.depths-mixed",
              found=", ".join(num(d, 2) for d in sorted(depths[True])) or "none",
              lost=", ".join(num(d, 2) for d in sorted(depths[False])) or "none"))


@section("ood-routes", "Starting points and objectives: out-of-domain KL at 50% against CPU time",
         "results/ood_routes.json")
def ood_routes(data: Data) -> str | None:      # not framed by result=: each route records its own command
    path, rec = data.result("ood_routes.json")
    rows = [[r["route"], num(r["cpu_minutes"], 1), num(r["ood_kl_50"], 3), num(r["ood_ppl_50"], 2),
             either(lambda v: num(v, 3), r.get("in_domain_kl_50")), either(code, r.get("command"), "not recorded")]
            for r in rec["routes"]] if rec else None
    return rec and paragraphs(source_line(data, path, note=rec.get("note", "")), table(
        ["route", "CPU minutes", "OOD KL at 50%", "OOD ppl x at 50%", "in-domain KL at 50%", "command"], rows))


@section("positions", "Where the text sits in the window: KL and passkey late in a long context",
         result="positions.json")
def positions(data: Data, path, rec) -> str:
    cell = {(r["method"], r["offset"]): r for r in rec["rows"]}
    rows = [[m["label"], m["positions"]] + [either(lambda r: f"{num(r['kl_to_base'], 3)} ("
                                                   f"{num(r['perplexity_ratio'], 2)}, {pct(r.get('top1_agreement'), 0)})", cell.get((m["label"], o)))
                                            for o in rec["offsets"]] for m in rec["methods"]]
    shift = rec.get("passkey_shift")
    moved = (f"The same {shift['length']:,}-token passkey prompts ({shift['method']}, {pct(shift['budget'])}) placed "
             "from position 0 and later: " + "; ".join(
                 f"from {int(o):,}: {v['correct']}/{v['n']} (uncompressed {v['base_correct']}/{v['n']})"
                 for o, v in by_int(shift["by_offset"])) + ".") if shift else ""
    return paragraphs(prose("positions", rec, budget=pct(rec["budget"], 0)),
                      table(["method (uniform ranks)", "fitted on positions"]
                            + [f"from {o:,}: KL (ppl x, top-1)" for o in rec["offsets"]], rows),
                      _passkey(rec) if rec.get("passkey") else "", moved)


def _passkey(rec: dict) -> str:
    keys = {(p["method"], p["budget"], p["length"]): p for p in rec["passkey"]}
    lengths, budgets = sorted({k[2] for k in keys}), sorted({k[1] for k in keys}, reverse=True)
    rows = [[m] + [_counted(keys.get((m, b, n))) for n in lengths for b in budgets]
            for m in dict.fromkeys(k[0] for k in keys)]
    base = ", ".join(f"{v['correct']}/{v['n']} at {int(k):,}" for k, v in by_int(rec["passkey_base"]))
    return paragraphs(f"Passkey retrieval in the real compressed cache, by projections and allocation (exact match, "
                      f"uncompressed: {base}):",
                      table(["method"] + [f"{n:,} tokens at {pct(b)}" for n in lengths for b in budgets], rows))


@section("passkey-rank-mix", "Passkey at 4,096 tokens between two points of the shipped trajectory",
         result="passkey_rank_mix.json")
def passkey_rank_mix(data: Data, path, rec) -> str:
    rows = [[r["setting"], pct(r["budget"]), _counted(r), num(r["mean_key_logp"], 2), num(r["mean_first_margin"], 2),
             f"{opening!r} ({times}/{len(r['top'])})"]
            for r in rec["rows"] for opening, times in [Counter(r["top"]).most_common(1)[0]]]   # ties: the first
    return paragraphs(prose("passkey-rank-mix", rec),
                      table(["setting", "budget", "exact match", "key log p", "first margin",
                             "opening token (prompts)"], rows),
                      "The command below runs the file's `script` field, with `MKV_DATA_DIR` set.")


@section("answers", "What compression does to answers: short factual prompts", result="answers.json")
def answers(data: Data, path, rec) -> str:
    n, cell = len(rec["prompts"]), {}
    for r in rec["rows"]:
        cell.setdefault((r["budget"], r["allocation"]), []).append(r)
    rows = [[pct(b)] + [f"{sum(r['survives'] for r in cell[(b, a)])} of {n} / "
                        f"{pct(sum(r['token_agreement'] for r in cell[(b, a)]) / n, 0)}" for a in rec["allocations"]]
            for b in sorted(rec["budgets"], reverse=True)]
    return paragraphs(prose("answers", rec, n=n, prompts="; ".join(f'"{p}"' for p in rec["prompts"])),
                      table(["budget"] + [f"{a}: answers kept / token agreement" for a in rec["allocations"]], rows))


def _facts(data: Data, path, rec: dict, key: str) -> str:
    """Known facts kept per budget, allocation and whole tokens (with the 95% interval), and token agreement."""
    cells = kept_facts(rec["rows"])
    whole = any(c["whole"] for c in cells)
    known = {r["prompt"] for r in rec["rows"] if r.get("known") and r.get("whole", "0+0") == "0+0"}
    rows = [[f"{c['whole']} whole"] * whole + [c["allocation"], pct(c["budget"]), count(c["kept"], c["known"]),
                                               pct(c["agreement"], 0)] for c in cells]
    head = ["tokens kept whole (first+recent)"] * whole + ["ranks", "bytes stored", "facts kept", "token agreement"]
    return paragraphs(prose(key, rec, n=len(rec["prompts"]), known=len(known)), table(head, rows))


for _name, _title in (("facts-capitals", "Facts from the weights: the capitals of the World Factbook's countries"),
                      ("facts-capitals-context", "Facts after a passage, with tokens kept whole at equal bytes")):
    section(_name, _title, result=_name.replace("-", "_") + ".json")(functools.partial(_facts, key=_name))


def _value(metric: str, value: float) -> str:
    return pct(value, 0) if metric == "top1_agreement" else num(value, 2 if metric == "perplexity_ratio" else 3)


def _ceiling_where(cell, kinds, budgets) -> str:
    """How much of the KL gap between shipped PCA and the best in-sample basis the shipped projections close with
    uniform ranks, whether the oracles and searched ranks do worse, and whether an in-sample basis fitted the text."""
    below = sorted({(m, r["perplexity_ratio"]) for (m, a, b), r in cell.items()
                    if kinds[m] == "in-sample" and r["perplexity_ratio"] < 1}, key=lambda x: x[1])
    names = sorted({m for m, _ in below})         # an in-sample row below the uncompressed perplexity fitted the text
    overfit = prose("ceiling.overfit", names=" and ".join(names), es="es" if len(names) == 1 else "",
                    best=num(below[0][1], 2), they="it was" if len(names) == 1 else "they were") if below else ""
    kl = {(m, b): r["kl_to_base"] for (m, a, b), r in cell.items() if a == "uniform"}
    shipped, in_sample, oracles = ([m for m in dict.fromkeys(m for m, _ in kl) if kinds[m] == k]
                                   for k in ("shipped", "in-sample", "oracle"))
    budgets = [b for b in budgets if all((m, b) in kl for m in shipped + in_sample)]
    if len(shipped) < 2 or not in_sample or not budgets:
        return overfit
    start, ours = shipped[0], shipped[-1]
    best = {b: min(in_sample, key=lambda m: kl[(m, b)]) for b in budgets}
    gaps = {b: kl[(start, b)] - kl[(best[b], b)] for b in budgets}
    text = (f"With uniform ranks {ours} closes " + " and ".join(
        f"{pct((kl[(start, b)] - kl[(ours, b)]) / gaps[b], 0) if gaps[b] > 0 else 'none'} at {pct(b)}" for b in budgets)
        + f" of the KL gap between {start} and the best in-sample basis ({', '.join(dict.fromkeys(best.values()))}).")
    if beaten := [m for m in oracles if all(kl[(m, b)] > kl[(ours, b)] for b in budgets)]:
        text += (f" The oracle rows ({'; '.join(beaten)}) are worse than {ours} at every budget: "
                 "no fixed basis reconstructs a sequence's keys and values better, yet the best reconstruction is not "
                 "the best output.")
    searched = [(cell[(m, "adaptive", b)]["kl_to_base"], kl[(m, b)]) for m in in_sample for b in budgets
                if (m, "adaptive", b) in cell]
    if searched and all(s > u for s, u in searched):
        text += (" Every in-sample basis does worse with the shipped search's ranks than with uniform ones: they "
                 "were fitted at the sampled ranks only, and the search spreads ranks over other values.")
    return f"{text} {overfit}" if overfit else text


def _ceiling_target(t: dict, cell: dict, kinds: dict, ours: list, whole: dict) -> str:
    """A target against the shipped value, the best ceiling row (searched ranks compete with every allocation at
    the budget) and the best oracle, and whether it lies above every ceiling row; then the shipped projections'
    value with tokens kept whole at equal bytes (``whole``: {(allocation, budget): row}), where measured."""
    metric, bound, at_most = t["metric"], t["bound"], t["direction"] == "at_most"
    meets, pick = ((lambda v: v <= bound), min) if at_most else ((lambda v: v >= bound), max)
    ceiling = {(m, a): r[metric] for (m, a, b), r in cell.items() if b == t["budget"] and kinds[m] != "shipped"
               and (a == "uniform" or t["allocation"] != "uniform")}
    shipped = cell.get((ours[0], t["allocation"], t["budget"])) if ours else None
    head = (f"{pct(t['budget'])}, {_ranks(t['allocation'])} ranks: "
            f"{CEILING_METRICS[metric]} {'<=' if at_most else '>='} {_value(metric, bound)}"
            + (f" (shipped: {_value(metric, shipped[metric])})" if shipped is not None else ""))
    if not ceiling:
        return f"{head}: no ceiling row measured at this budget."
    best = pick(ceiling, key=ceiling.get)
    oracles = {k: v for k, v in ceiling.items() if kinds[k[0]] == "oracle"}
    verdict = ("met by the shipped projections" if shipped is not None and meets(shipped[metric]) else
               "within the ceiling" if meets(ceiling[best]) else
               "**lies above the ceiling**: no in-sample basis and no oracle measured reaches it")
    text = (f"{head}: {verdict} (best: {best[0]}, {_ranks(best[1])} ranks, "
            f"{_value(metric, ceiling[best])}")
    if oracles and best not in oracles:
        top = pick(oracles, key=oracles.get)
        text += (f"; best oracle: {_value(metric, oracles[top])}, "
                 + ("which reaches it" if meets(oracles[top]) else "short of it"))
    if (kept := whole.get((t["allocation"], t["budget"]))) is not None:
        text += (f"; with the first {kept['keep_first']} and latest {kept['keep_recent']} tokens whole at equal bytes: "
                 f"{_value(metric, kept[metric])}, " + ("which meets it" if meets(kept[metric]) else "short of it"))
    return text + ")."


@section("ceiling", "The ceiling of fixed projections: in-sample bases and the per-sequence oracle",
         "results/whole_tokens.json", result="ceiling.json")
def ceiling(data: Data, path, rec) -> str:
    kinds = {m["label"]: m["kind"] for m in rec["methods"]}
    cell = {(r["method"], r["allocation"], r["target_budget"]): r for r in rec["rows"] if r["domain"] == "mean"}
    rows = [[m["label"], _ranks(a)]
            + [_triple(cell.get((m["label"], a, b)), kl_first=True) for b in rec["budgets"]]
            + [either(lambda s: num(s / 60, 1), m.get("fit_cpu_s"))] for m in rec["methods"] for a in m["allocations"]]
    ours = [m for m in dict.fromkeys(m for m, _, _ in cell) if kinds[m] == "shipped"][-1:]
    searched = (f"; searched ranks: each shipped projections' own trajectory, and for every other row the shipped "
                f"trajectory of {code(rec['searched_ranks'])}" if rec.get("searched_ranks") else "")
    cpu, hw = rec.get("cpu_time_s") or {}, rec.get("hardware") or {}
    kept = data.result("whole_tokens.json")[1]               # its widest window: the passkey's setting too
    whole = _budget_cells(kept, max(r["keep_recent"] for r in kept["rows"])) if kept else {}
    load = (hw.get("load_average_start") or [None])[0]
    return paragraphs(
        prose("ceiling", _suite(rec), s="s" if len(rec["domains"]) > 1 else "", searched=searched,
              schedule=", ".join(map(str, rec["schedule"])) or "d/8, ..., d"),
        table(["method", "ranks"] + [f"{pct(b)}: KL / ppl x / top-1" for b in rec["budgets"]]
              + ["CPU minutes to fit (this row's step)"], rows),
        _ceiling_where(cell, kinds, rec["budgets"]),
        bullets([_ceiling_target(t, cell, kinds, ours, whole) for t in rec.get("targets", [])],
                prose("ceiling.targets"))
        if rec.get("targets") else "",
        f"CPU time: {num(cpu.get('total', 0) / 60, 1)} minutes in all, "
        f"{num(rec.get('wall_time_s', 0) / 60, 1)} minutes wall ({hw.get('device')}, {hw.get('torch_threads')} torch "
        f"thread(s), {hw.get('cpu_count')} cores"
        + (f", load average {num(load, 1)} when it started" if load is not None else "") + ").")


@section("ceiling-passkey", "The oracle on passkey retrieval: the best reconstruction loses the key",
         "results/retrieval_8k.json", result="ceiling_passkey.json")
def ceiling_passkey(data: Data, path, rec) -> str:
    cell = {(r["method"], r["allocation"], r["budget"], r["length"]): r for r in rec["rows"]}
    cols = [(n, b) for n in rec["lengths"] for b in rec["budgets"]]
    kinds = list(dict.fromkeys((r["method"], r["allocation"]) for r in rec["rows"] if r["allocation"]))
    show = (lambda r: f"{r['correct']}/{r['n']} ({num(r['mean_key_logp'], 1)})")
    rows = [["uncompressed", "-"] + [either(show, cell.get(("uncompressed", None, 1.0, n))) for n, _ in cols]]
    rows += [[m, _ranks(a)] + [either(show, cell.get((m, a, b, n))) for n, b in cols]
             for m, a in kinds]
    oracles = [k for k in kinds if k[0] in (ORACLE, ORACLE_UNCENTRED)]
    shipped = [k for k in kinds if k not in oracles]
    total = (lambda keys: sum(cell[(m, a, b, n)]["correct"] for m, a in keys for n, b in cols if (m, a, b, n) in cell))
    best_oracle = max((total([k]) for k in oracles), default=0)
    best_shipped = max((total([k]) for k in shipped), default=0)
    verdict = prose("ceiling-passkey.loses" if best_oracle < best_shipped else "ceiling-passkey.keeps",
                    oracle=best_oracle, shipped=best_shipped, cells=len(cols) * rec["n"])
    _, greedy = data.result("retrieval_8k.json")           # the same prompts, greedy decoding in the hook
    length = max(rec["lengths"])
    same = []
    for g in (greedy or {}).get("rows", []):
        mine = [r for r in rec["rows"] if r["length"] == g["length"] == length and r["budget"] == g["budget"]
                and r["n"] == g["n"] and r["allocation"] == g["allocation"] and r["method"] in
                CEILING_SHIPPED.values()]
        same += [(g["method"], g["correct"], mine[0]["correct"])] if mine else []
    check = prose("ceiling-passkey.greedy", length=f"{length:,}", counts="; ".join(
        f"{m}: {a} and {b}" for m, a, b in same), agree="agree" if all(a == b for _, a, b in same) else
        "differ") if same else ""
    return paragraphs(prose("ceiling-passkey", rec, base=num(min(r["mean_key_logp"] for r in rec["rows"]
                                                                 if r["method"] == "uncompressed"), 1)),
                      table(["method", "ranks"] + [f"{n:,} at {pct(b)}" for n, b in cols], rows), verdict, check)


@section("climb", "A longer climb on CPU: out-of-domain KL against tokens trained", "results/climb_suite.json",
         result="climb.json")
def climb(data: Data, path, rec) -> str:
    run, trend = rec["run"], rec["trends"]["0.5"]
    budgets = sorted(rec["trends"], key=float, reverse=True)
    cell = {(p["source"], p["step"], str(p["budget"])): p for p in rec["points"]}
    evaluations = dict.fromkeys((p["source"], p["step"], p["tokens"]) for p in rec["points"])

    def kl_ppl(p):
        return f"{num(p['kl_to_base'], 3)} / {num(p['perplexity_ratio'], 2)}"

    rows = [[f"{tokens:,}", source, step] + [either(kl_ppl, cell.get((source, step, b))) for b in budgets]
            for source, step, tokens in evaluations]
    halves = "; ".join(f"{h['tokens'][0]:,} to {h['tokens'][1]:,} tokens: {num(h['per_doubling'], 3)} ± "
                       f"{num(h['per_doubling_se'], 3)}" for h in trend.get("halves", []))
    c, start = run["config"], rec["same_start"]
    return paragraphs(
        prose("climb", run, rec, processes=run["hardware"]["processes"], lr=c["lr"],
              minutes=num(run["wall_time_s"] / 60, 0),
              per_step=f"{run['tokens_seen'] // run['steps']:,}", every=c["eval_every"],
              eval_tokens=f"{run['eval']['tokens']:,}", shipped_last=num(start["shipped_last"], 3),
              climb_first=num(start["climb_step_0"], 3)),
        table(["tokens trained end to end", "run", "step"] + [f"{pct(float(b), None)}: KL / ppl x" for b in budgets],
              rows, align="rlr" + "r" * len(budgets)),
        prose("climb.trend", per_doubling=num(trend["per_doubling"], 3), se=num(trend["per_doubling_se"], 3),
              points=trend["points"], doublings=num(trend["doublings"], 1), at=f"{trend['at_tokens']:,}",
              extrapolated=num(trend["extrapolated"], 3), halves=halves or "-",
              others="; ".join(f"{pct(float(b), None)}: {num(rec['trends'][b]['per_doubling'], 3)} per doubling, "
                               f"{num(rec['trends'][b]['extrapolated'], 3)}" for b in budgets if b != "0.5")),
        _continued_suite(data, rec["shipped"]["fingerprint"]),
        "Training command (run from `build/climb/`): " + code(rec["launch"]))


def _continued_suite(data: Data, shipped_fingerprint: str, name: str = "climb_suite.json", key: str = "climb") -> str:
    """Projections continued from the shipped ones (their suite record ``name``) on the whole suite and the passkey
    beside the shipped ones, and the verdict in the prose ``key``.better / .loses-passkeys / .not-better ('' without
    the file)."""
    path, suite = data.result(name)
    _, shipped = data.result("ood_suite.json")
    _, passkeys = data.result("retrieval.json")
    if suite is None or shipped is None:
        return ""
    ours, before = _budget_cells(suite), _budget_cells(shipped, projections=shipped_fingerprint)
    passkey = {(r["method"], r["budget"], r["length"]): r for r in
               (suite.get("retrieval") or {}).get("rows", []) + (passkeys or {}).get("rows", [])}
    label = {m["allocation"]: m["label"] for m in suite["methods"]}
    lost = []
    for allocation, mine in label.items():
        for (method, budget, length), r in passkey.items():
            theirs = passkey.get((SHIPPED_SUITE_LABELS[allocation], budget, length))
            if method == mine and theirs and r["correct"] < theirs["correct"]:
                lost.append(f"{_ranks(allocation)} {pct(budget, None)} at "
                            f"{length:,} tokens ({theirs['correct']} -> {r['correct']})")
    lengths = [int(n) for n in (suite.get("retrieval") or {}).get("base", {})]
    rows = []
    for name, cells, methods in (("continued", ours, label), ("shipped", before, SHIPPED_SUITE_LABELS)):
        for (allocation, budget), r in sorted(cells.items(), key=lambda kv: (kv[0][0], -kv[0][1])):
            if budget in suite["budgets"]:
                rows.append([name, _ranks(allocation), pct(budget, None),
                             _triple(r)] + [either(lambda k: count(k["correct"], k["n"]),
                                                   passkey.get((methods.get(allocation), budget, n)))
                                            for n in lengths])
    better = all(ours[k]["kl_to_base"] < before[k]["kl_to_base"] for k in ours if k in before)
    verdict = (".not-better" if not better else ".loses-passkeys" if lost else ".better")
    return paragraphs(
        prose(f"{key}.suite", _suite(suite), source=code(data.rel(path)), command=code(suite["command"])),
        table(["projections", "ranks", "budget", "ppl x / KL / top-1"] + [f"passkey, {n:,} tokens" for n in lengths],
              rows),
        prose(key + verdict, lost="; ".join(lost)))


SHIPPED_SUITE_LABELS = {"uniform": "MatryoshkaKV, uniform", "adaptive": "MatryoshkaKV, adaptive"}


@section("long-blocks", "Training at the whole window: KD on 8,192-token recall blocks", "results/long8k_suite.json",
         "results/retrieval_8k.json", result="long8k_passkey_8k.json")
def long_blocks(data: Data, path, rec) -> str | None:
    _, shipped = data.result("retrieval_8k.json")                     # the same prompts, the shipped projections
    if shipped is None:
        return None
    fingerprints = {m.get("fingerprint") for m in (data.result("long8k_suite.json")[1] or {}).get("methods", [])}
    recipe = "; ".join(f"{UNSHIPPED_DETAILS[f]} ({f})" for f in sorted(fingerprints - {None}) if f in UNSHIPPED_DETAILS)
    length = max(rec["lengths"])
    rows = [dict(rec["base_rows"][str(length)], method="uncompressed", budget=1.0)]
    rows += [r for r in shipped["rows"] + rec["rows"] if r["length"] == length]
    table_rows = [[r["method"], pct(r["budget"], None), count(r["correct"], r["n"]), num(r["mean_key_logp"], 2),
                   ", ".join(num(v, 1) for v in r["key_logp"])] for r in rows]
    mine = {r["allocation"]: r for r in rec["rows"]}
    theirs = {r["allocation"]: r for r in shipped["rows"] if r["length"] == length}
    moved = "; ".join(f"{a}: {theirs[a]['correct']} -> {r['correct']} of {r['n']}, mean key log p "
                      f"{num(theirs[a]['mean_key_logp'], 2)} -> {num(r['mean_key_logp'], 2)}"
                      for a, r in mine.items() if a in theirs)
    return paragraphs(
        prose("long-blocks", rec, recipe=recipe or "not recorded", length=f"{length:,}",
              shipped_command=code(shipped["command"])),
        table(["method", "budget", "exact match", "mean key log p", "key log p per prompt"], table_rows),
        prose("long-blocks.moved", moved=moved or "-"),
        _continued_suite(data, shipped_fingerprint("trained"), "long8k_suite.json", "long-blocks"))


def _passkey_cells(*records: dict) -> dict:
    return {(r["allocation"], r["budget"], r["length"]): r for rec in records for r in rec["rows"]}


def _side(suite: dict, recent: int, *passkeys: dict) -> tuple[dict, dict, dict]:
    """One side of a with-tokens-whole comparison: (mean suite cells, in-domain cells, passkey cells)."""
    return _budget_cells(suite, recent), _budget_cells(suite, recent, "in-domain"), _passkey_cells(*passkeys)


@section("whole-trained", "Training for the cache that keeps tokens whole", "results/whole_trained_plain.json",
         "results/whole_trained_8k.json", "results/whole_tokens.json", "results/retrieval_whole_tokens.json",
         "results/retrieval_8k_whole.json", "results/whole_kept_suite.json", "results/whole_kept_8k.json",
         "results/whole_kept_plain.json", result="whole_trained_suite.json")
def whole_trained(data: Data, path, rec) -> str | None:
    first, recent = rec["methods"][0]["keep_first"], rec["methods"][0]["keep_recent"]
    files = [data.result(n)[1] for n in ("whole_tokens.json", "retrieval_whole_tokens.json", "retrieval_8k_whole.json",
                                         "whole_trained_8k.json")]
    if any(f is None for f in files) or data.result("whole_trained_plain.json")[1] is None:
        return None
    shipped_suite, shipped_keys, shipped_8k, mine_8k = files
    sides = {"shipped": _side(shipped_suite, recent, shipped_keys, shipped_8k),
             "trained with tokens whole": _side(rec, recent, rec["retrieval"], mine_8k)}
    kept, kept_8k = (data.result(n)[1] for n in WHOLE_KEPT_SEARCH)
    if kept and kept_8k:
        sides["trained, searched with tokens whole"] = _side(kept, recent, kept["retrieval"], kept_8k)
    lengths = sorted({k[2] for k in sides["shipped"][2]})
    key_cell = lambda k: count(k["correct"], k["n"]) + (f" ({num(k['mean_key_logp'], 1)})"  # noqa: E731
                                                        if "mean_key_logp" in k else "")
    rows = [[name, _ranks(a), pct(b, None), _triple(r), _kl(inside.get((a, b)))]
            + [either(key_cell, passkeys.get((a, b, n))) for n in lengths]
            for name, (suite, inside, passkeys) in sides.items()
            for (a, b), r in sorted(suite.items(), key=lambda kv: (kv[0][0], -kv[0][1]))]
    recipe = "; ".join(f"{UNSHIPPED_DETAILS[f]} ({f})" for f in dict.fromkeys(m["fingerprint"] for m in rec["methods"])
                       if f in UNSHIPPED_DETAILS)
    return paragraphs(
        prose("whole-trained", _suite(rec), first=first, recent=recent, recipe=recipe or "not recorded"),
        table(["projections", "ranks", "bytes", "ppl x / KL / top-1", "in-domain KL"]
              + [f"passkey, {n:,} tokens" for n in lengths], rows),
        _whole_trained_moved(sides["shipped"], sides["trained with tokens whole"]),
        _whole_trained_plain(data, mine_8k["command"]),
        _whole_kept(data, sides, kept, kept_8k) if kept and kept_8k else "")


WHOLE_KEPT_SEARCH = ("whole_kept_suite.json", "whole_kept_8k.json")   # the whole-trained, searched with tokens whole


def _whole_kept(data: Data, sides: dict, suite: dict, long: dict) -> str:
    """The whole-trained projections searched with the same tokens whole against their plain search."""
    method = suite["methods"][0]
    return paragraphs(
        prose("whole-trained.kept", method, commands=", ".join(code(r["command"]) for r in (suite, long)),
              moved=_whole_trained_moved(sides["trained with tokens whole"],
                                         sides["trained, searched with tokens whole"], "whole-trained.kept-moved")),
        _whole_kept_plain(data))


def _whole_kept_plain(data: Data) -> str:
    """Those ranks in a cache that keeps no token whole, against uniform ranks there ('' without the files)."""
    path, mine = data.result("whole_kept_plain.json")
    uniform = data.result("whole_trained_plain.json")[1]
    if mine is None or uniform is None:
        return ""
    ours, theirs = _budget_cells(mine), _budget_cells(uniform)
    pairs = [(b, r, theirs.get(("uniform", b))) for (_, b), r in sorted(ours.items(), key=lambda kv: -kv[0][1])]
    worse = all(u is not None and r["kl_to_base"] > u["kl_to_base"] for _, r, u in pairs)
    return prose("whole-trained.kept-plain", source=code(data.rel(path)), command=code(mine["command"]),
                 cells="; ".join(f"{pct(b, None)} {num(r['kl_to_base'], 3)} (uniform {_kl(u)})" for b, r, u in pairs),
                 verdict=prose("whole-trained.kept-plain.worse") if worse else "")


def _whole_trained_moved(shipped: tuple, trained: tuple, key: str = "whole-trained.moved") -> str:
    """Shipped -> trained with tokens whole (or any two sides of that table): the KL per cell, the passkey counts
    that changed, and the verdict, in the prose ``key``."""
    (before, _, theirs), (after, _, ours) = shipped, trained
    order = [k for k in sorted(after, key=lambda k: (k[0], -k[1])) if k in before]
    kl_moves = "; ".join(f"{_ranks(a)} {pct(b, None)} {num(before[a, b]['kl_to_base'], 3)} -> "
                         f"{num(after[a, b]['kl_to_base'], 3)}" for a, b in order)
    moved = [f"{_ranks(k[0])} {pct(k[1], None)} at {k[2]:,} tokens {theirs[k]['correct']} -> {r['correct']}"
             for k, r in sorted(ours.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[0][2]))
             if k in theirs and r["correct"] != theirs[k]["correct"]]
    lower = {k: after[k]["kl_to_base"] < before[k]["kl_to_base"] for k in order}
    named = lambda keep: ", ".join(f"{_ranks(a)} {pct(b, None)}" for (a, b), v in lower.items() if v == keep)  # noqa: E731
    verdict = ("Lower KL at every budget and allocation measured." if all(lower.values()) else
               f"Lower KL at {named(True) or 'none'}, not at {named(False)}.")
    return prose(key, kl_moves=kl_moves, passkey_moves="; ".join(moved) or "unchanged", verdict=verdict)


def _whole_trained_plain(data: Data, command_8k: str) -> str:
    """The projections trained with tokens whole in a cache that keeps none whole, against the shipped ones."""
    path, plain = data.result("whole_trained_plain.json")
    shipped = _budget_cells(data.result("ood_suite.json")[1], projections=shipped_fingerprint("trained"))
    pairs = [(b, shipped["uniform", b], _budget_cells(plain)["uniform", b]) for b in plain["budgets"]]
    higher = [y["kl_to_base"] > x["kl_to_base"] for _, x, y in pairs]
    verdict = ("worse than the shipped ones" if all(higher) else "better than the shipped ones" if not any(higher)
               else "neither better nor worse everywhere")
    moved = "; ".join(f"KL at {pct(b, None)} {num(x['kl_to_base'], 3)} -> {num(y['kl_to_base'], 3)}"
                      for b, x, y in pairs)
    return prose("whole-trained.plain", source=code(data.rel(path)), command=code(plain["command"]),
                 command_8k=code(command_8k), moved=moved, verdict=verdict)


@section("second-architecture", "A second architecture: Gemma 3 270M", "results/gemma3_270m_passkey.json",
         "results/items/gemma3_270m_passkey_items.csv", "results/gemma3_270m_searched.json",
         result="gemma3_270m_suite.json")
def second_architecture(data: Data, path, rec) -> str:
    cell = {(r["method"], r["target_budget"]): r for r in rec["rows"] if r["domain"] == "mean"}
    rows = [[m["label"], projections_recipe(data, m["fingerprint"])] + [_triple(cell.get((m["label"], b)))
                                                                        for b in rec["budgets"]] for m in rec["methods"]]
    start, end = (cell[(rec["methods"][i]["label"], 0.5)]["kl_to_base"] for i in (0, -1))
    return paragraphs(prose("second-architecture", _suite(rec), pca_kl=num(start, 3), kd_kl=num(end, 3),
                            cut=pct(1 - end / start, 0)),
                      table(["projections (uniform ranks)", "made by"]
                            + [f"{pct(b)}: ppl x / KL / top-1" for b in rec["budgets"]], rows),
                      "Recipes in full: " + "; ".join(f"{code(m['fingerprint'])}: {UNSHIPPED_DETAILS[m['fingerprint']]}"
                                                      for m in rec["methods"] if m["fingerprint"] in UNSHIPPED_DETAILS)
                      + ". GEMMA stands for the model file, PCA and LAYERWISE for the projections each step wrote.",
                      _gemma_searched(data), _gemma_passkey(data))


def _gemma_searched(data: Data) -> str:
    """Uniform against searched ranks for the KD-trained projections, from gemma3_270m_searched.json ('' without)."""
    path, rec = data.result("gemma3_270m_searched.json")
    if rec is None:
        return ""
    cell = {(r["allocation"], r["target_budget"]): r for r in rec["rows"] if r["domain"] == "mean"}
    rows = [[_ranks(a)] + [_triple(cell.get((a, b))) for b in rec["budgets"]]
            for a in dict.fromkeys(m["allocation"] for m in rec["methods"])]
    return paragraphs(prose("second-architecture.searched", source=code(data.rel(path))),
                      table(["ranks"] + [f"{pct(b)}: ppl x / KL / top-1" for b in rec["budgets"]], rows),
                      commands_line([rec["command"]]))


def _gemma_passkey(data: Data) -> str:
    """Passkey in the real compressed cache on the same model, from gemma3_270m_passkey.json ('' without it)."""
    path, rec = data.result("gemma3_270m_passkey.json")
    if rec is None:
        return ""
    made = {"uncompressed": "uncompressed", "pca": "PCA", "matryoshka": "KD-trained"}
    rows = [f"{made[r['method'].split(':')[0]]} {r['setting']}: {count(r['correct'], r['n'])}" for r in rec["rows"]]
    return paragraphs(f"Passkey retrieval in the real compressed cache ({code(data.rel(path))}, {rec['n']} prompts "
                      f"of {', '.join(f'{n:,}' for n in rec['lengths'])} tokens, uniform ranks): " + "; ".join(rows)
                      + ".", commands_line([rec["command"]]))
