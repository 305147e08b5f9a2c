"""Results sections for the comparison bench (``mkv compare``): every method at matched bytes, per task.

Files: ``data/results/compare*.json`` (summaries written by :func:`mkvlib.compare.run.run_compare`, each recording
its command) and the per-item stores beside them (``compare*_items.csv``), which the summaries are built from.
"""
from __future__ import annotations

from .markdown import DASH, count, num, pct, table
from .records import Data
from .results import commands_line, section, source_line


def _cell(row: dict | None) -> str:
    if row is None or not row.get("n"):
        return DASH
    if row["task"] == "ppl":
        return f"{num(row['perplexity_ratio'], 2)} / {num(row['kl'], 3)}"
    return count(row["correct"], row["n"]) + (" (flagged)" if row.get("flagged") else "")


def compare_table(rec: dict) -> str:
    """One line per (method, setting, length), a column per task: ppl ratio / KL, or correct / items."""
    tasks = rec["tasks"]
    order = {m: i for i, m in enumerate(rec["methods"])}
    groups: dict = {}
    for r in rec["rows"]:
        groups.setdefault((r["method"], r["setting"], r["length"]), {})[r["task"]] = r
    keys = sorted(groups, key=lambda k: (k[2], order.get(k[0], len(order)), -next(iter(groups[k].values()))["fraction"]))
    rows = []
    for m, s, n_tokens in keys:
        first = next(iter(groups[(m, s, n_tokens)].values()))
        asked = ", ".join(pct(f, None) for f in first["requested"])
        rows.append([m + (" (composed)" if first.get("composed") else ""), s, asked, pct(first["fraction"]),
                     f"{n_tokens:,}"] + [_cell(groups[(m, s, n_tokens)].get(t)) for t in tasks])
    headers = ["method", "setting", "bytes asked", "bytes stored", "tokens"] + [
        "ppl x / KL" if t == "ppl" else t for t in tasks]
    return table(headers, rows)


def status_lines(rec: dict) -> str:
    """Methods that did not run (unsupported, unreachable bytes, failed), one line each."""
    lines = []
    for s in rec["status"]:
        where = f" at {pct(s['requested'], None)} of the bytes, {s['length']:,} tokens" if s.get("requested") else ""
        note = s["note"].split(": ask for")[0]
        lines.append(f"- {s['method']}: {s['status']}{where} ({note})")
    return "Not run:\n\n" + "\n".join(lines) if lines else ""


SUMMARIES = ("compare.json", "compare_4k.json")    # the main table, then the same methods at longer contexts


@section("compare", "Where the bytes go: every method at matched bytes", "results/compare.json",
         "results/compare_items.csv", "results/compare_4k.json", "results/compare_4k_items.csv")
def compare(data: Data) -> str | None:
    parts = []
    for name in SUMMARIES:
        path, rec = data.result(name)
        if rec is None:
            continue
        ceiling = "; ".join(f"{t} " + ", ".join(f"{pct(a, 0)} at {int(n):,}" for n, a in sorted(
            by.items(), key=lambda x: int(x[0]))) for t, by in rec["ceiling"].items())
        note = (f"{rec['model']}; {', '.join(f'{n:,}' for n in rec['lengths'])} tokens, {rec['n']} items per task "
                f"and length, seed {rec['seed']}{_projections_used(rec)}; each method at its setting nearest to each "
                "fraction of the uncompressed cache's bytes per token (all stored bytes counted: scales, residual buffers; "
                "projection matrices are a fixed cost, not per token). ppl: perplexity ratio / KL to the "
                f"uncompressed model on the last {rec['target_tokens']} tokens of held-out blocks (the rest is the "
                "stored prefix); retrieval: exact-match answers, correct / items with the 95% Wilson interval. Uncompressed accuracy (the "
                f"ceiling): {ceiling}. A task whose ceiling is below {pct(rec['cannot_do_below'], 0)} is flagged "
                "(the model cannot do it) and left out of averages.")
        parts += [source_line(data, path, data.results / rec.get("items_file", "compare_items.csv")), note,
                  compare_table(rec), status_lines(rec), commands_line([rec.get("command")])]
    return "\n\n".join(p for p in parts if p) or None


def _passkey_rows(rec: dict) -> list[list]:
    order = {m: i for i, m in enumerate(rec["methods"])}
    found = sorted((r for r in rec["rows"] if r["task"] == "passkey" and r.get("n")),
                   key=lambda r: (order.get(r["method"], len(order)), -r["fraction"], r["length"]))
    rows = []
    for r in found:
        rel = r.get("relative")
        rows.append([r["method"], r["setting"], pct(r["fraction"]), f"{r['length']:,}", count(r["correct"], r["n"]),
                     pct(rel, 0) if rel is not None else DASH,
                     ", ".join(num(d, 2) for d in r["failed_depths"]) or "none"])
    return rows


def _projections_used(rec: dict) -> str:
    """', projections <fingerprints>' from the rows' setting identities (summaries written before identities
    were recorded: '')."""
    found = sorted({part[len("proj="):] for r in rec["rows"] for part in str(r.get("identity", "")).split(";")
                    if part.startswith("proj=")})
    return f", projections {', '.join(found)} (fingerprint{'s' * (len(found) > 1)})" if found else ""


def _passkey_section(data: Data, name: str, what: str) -> str | None:
    path, rec = data.result(name)
    if rec is None:
        return None
    note = (f"{rec['model']}; {rec['n']} passkey prompts per length, seed {rec['seed']}, in the real compressed "
            f"cache{_projections_used(rec)}. {what} Relative: accuracy over the uncompressed model's on the same "
            "prompts. Failed depths: where the key sat (0 = start of the filler, 1 = end) in the prompts answered wrong.")
    return "\n\n".join([source_line(data, path), note,
                        table(["method", "setting", "bytes stored", "tokens", "correct", "relative", "failed depths"],
                              _passkey_rows(rec)),
                        commands_line([rec.get("command")])])


@section("compare-passkey-lengths", "Passkey retrieval with MatryoshkaKV by context length: where it breaks",
         "results/compare_passkey_lengths.json", "results/compare_passkey_lengths_items.csv")
def compare_passkey_lengths(data: Data) -> str | None:
    return _passkey_section(data, "compare_passkey_lengths.json", "`trajectory=` names the rank trajectory of the "
                            "adaptive allocation (default: the shipped one).")


@section("compare-passkey-halves", "Which half breaks the passkey: keys or values alone",
         "results/compare_kv_halves.json", "results/compare_kv_halves_items.csv")
def compare_passkey_halves(data: Data) -> str | None:
    return _passkey_section(data, "compare_kv_halves.json", "`only=keys` compresses the keys alone (uniform ranks, "
                            "values at full rank), `only=values` the values alone.")


@section("compare-passkey-halves-shipped", "One half alone with the shipped projections (trained on recall blocks)",
         "results/compare_passkey_halves_shipped.json", "results/compare_passkey_halves_shipped_items.csv")
def compare_passkey_halves_shipped(data: Data) -> str | None:
    return _passkey_section(data, "compare_passkey_halves_shipped.json", "The same ablation as above with the "
                            "projections shipped now; both halves together at 50% are in the positions section "
                            "(data/results/positions.json).")


FEATURE_METHODS = ("pca", "matryoshka", "svd", "think")     # the feature-axis methods, by registered name


@section("compare-feature-half", "Half the features: MatryoshkaKV against PCA, ThinK and SVD",
         "results/compare.json", "results/compare_think_half.json", "results/compare_think_half_items.csv")
def compare_feature_half(data: Data) -> str | None:
    """Each feature-axis method keeping half its feature dimensions: rank 50% (PCA, MatryoshkaKV, SVD) or half
    the key channels (ThinK, values kept whole: 75% of the bytes)."""
    main_path, main = data.result("compare.json")
    think_path, think = data.result("compare_think_half.json")
    if main is None or think is None:
        return None
    picked = [r for r in main["rows"] if r["method"].split(":")[0] in FEATURE_METHODS and r.get("n")
              and r["params"].get("budget") == 0.5 and "only" not in r["params"]]
    picked += [r for r in think["rows"] if r["method"].startswith("think") and r.get("n")
               and r["params"].get("keep") == 0.5]
    if not picked:
        return None
    tasks = [t for t in main["tasks"] if t in think["tasks"]]
    groups: dict = {}
    for r in picked:
        groups.setdefault((r["method"], r["setting"], r["length"]), {})[r["task"]] = r
    rows = [[m, s, pct(next(iter(g.values()))["fraction"]), f"{n:,}"] + [_cell(g.get(t)) for t in tasks]
            for (m, s, n), g in groups.items()]
    note = ("Every feature-axis method keeping half of what it prunes: ranks at 50% for PCA, MatryoshkaKV (adaptive "
            "and uniform) and the weights' SVD, half the key channels for ThinK (which keeps values whole, so it "
            "stores 75% of the bytes). The same items (seed, length) in both files; cells as in the main table.")
    return "\n\n".join([source_line(data, main_path, think_path), note,
                        table(["method", "setting", "bytes stored", "tokens"] + [
                            "ppl x / KL" if t == "ppl" else t for t in tasks], rows),
                        commands_line([main.get("command"), think.get("command")])])
