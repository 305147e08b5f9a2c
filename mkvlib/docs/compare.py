"""Results sections for the comparison bench (``mkv compare``): every method at matched bytes, per task, from the
summaries ``data/results/compare*.json`` (each records its command) and the per-item stores they name."""
from __future__ import annotations

import functools

from .accuracy import projections_recipe
from .markdown import DASH, bullets, count, num, paragraphs, pct, table
from .records import Data, by_int
from .results import commands_line, prose, section, source_line

FEATURE_METHODS = ("pca", "matryoshka", "svd", "think")     # the feature-axis methods, by registered name


def _cell(row: dict | None) -> str:
    if row is None or not row.get("n"):
        return DASH
    if row["task"] == "ppl":
        return f"{num(row['perplexity_ratio'], 2)} / {num(row['kl'], 3)} / {pct(row.get('top1'), 0)}"
    return count(row["correct"], row["n"]) + (" (flagged)" if row.get("flagged") else "")


def _tasks_table(rows, tasks, order=None) -> str:
    """One line per (method, setting, length), a column per task: ppl ratio / KL, or correct / items; with
    ``order`` (the summary's methods) sorted and with the bytes asked, else in the rows' order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"], r["length"]), {})[r["task"]] = r
    first = {k: next(iter(g.values())) for k, g in groups.items()}
    keys = sorted(groups, key=lambda k: (k[2], order.get(k[0], len(order)), -first[k]["fraction"])) if order else groups
    asked = ["bytes asked"] * bool(order)
    return table(["method", "setting", *asked, "bytes stored", "tokens", *["ppl x / KL / top-1" if t == "ppl" else t
                                                                          for t in tasks]],
                 [[m + (" (composed)" if first[m, s, n].get("composed") else ""), s]
                  + [", ".join(pct(f, None) for f in first[m, s, n]["requested"])] * bool(order)
                  + [pct(first[m, s, n]["fraction"]), f"{n:,}"] + [_cell(groups[m, s, n].get(t)) for t in tasks]
                  for m, s, n in keys])


def _projections_used(data: Data, rec: dict) -> str:
    """', projections <recipe> (<fingerprint>), ...' from the rows' setting identities; '' when there are none."""
    found = sorted({part[len("proj="):] for r in rec["rows"] for part in str(r.get("identity", "")).split(";")
                    if part.startswith("proj=")})
    named = [f"{projections_recipe(data, fp)} ({fp}" + (", not committed" if data.projections_file(fp) is None
                                                         else "") + ")" for fp in found]
    return f", projections {', '.join(named)}" if named else ""


def _compare(data: Data, path, rec: dict, key: str = "compare") -> str:
    """Source line, the prose ``key`` (filled like 'compare'), the table, what was not run and the command."""
    ceiling = "; ".join(f"{t} " + ", ".join(f"{pct(a, 0)} at {int(n):,}" for n, a in by_int(by))
                        for t, by in rec["ceiling"].items())
    not_run = [f"{s['method']}: {s['status']}" + (f" at {pct(s['requested'], None)} of the bytes, {s['length']:,} "
                                                  "tokens" if s.get("requested") else "")
               + f" ({s['note'].split(': ask for')[0]})" for s in rec["status"]]
    return paragraphs(source_line(data, path, data.results / rec["items_file"]),
                      prose(key, rec, lengths=", ".join(f"{n:,}" for n in rec["lengths"]), ceiling=ceiling,
                            projections=_projections_used(data, rec), cannot_do=pct(rec["cannot_do_below"], 0)),
                      _tasks_table(rec["rows"], rec["tasks"], {m: i for i, m in enumerate(rec["methods"])}),
                      bullets(not_run, "Not run:") if not_run else "", commands_line([rec.get("command")]))


@section("compare", "Where the bytes go: every method at matched bytes", "results/compare.json",
         "results/compare_4k.json")
def compare(data: Data) -> str | None:     # the main table, then the same methods at longer contexts
    return paragraphs(*[_compare(data, path, rec) for path, rec in map(data.result, ("compare.json", "compare_4k.json"))
                        if rec is not None]) or None


def _passkey(data: Data, path, rec, key: str) -> str:
    order = {m: i for i, m in enumerate(rec["methods"])}
    rows = [[r["method"], r["setting"], pct(r["fraction"]), f"{r['length']:,}", count(r["correct"], r["n"]),
             pct(r["relative"], 0) if r.get("relative") is not None else DASH,
             ", ".join(num(d, 2) for d in r["failed_depths"]) or "none"]
            for r in sorted((r for r in rec["rows"] if r["task"] == "passkey" and r.get("n")),
                            key=lambda r: (order.get(r["method"], len(order)), -r["fraction"], r["length"]))]
    return paragraphs(prose("compare-passkey", rec, projections=_projections_used(data, rec), what=prose(key)),
                      table(["method", "setting", "bytes stored", "tokens", "correct", "relative", "failed depths"],
                            rows))


for _name, _file, _title in (
        ("compare-passkey-lengths", "compare_passkey_lengths",
         "Passkey retrieval with MatryoshkaKV by context length: where it breaks"),
        ("compare-passkey-halves", "compare_kv_halves", "Which half breaks the passkey: keys or values alone"),
        ("compare-passkey-halves-shipped", "compare_passkey_halves_shipped",
         "One half alone with the shipped projections (trained on recall blocks)"),
        ("compare-passkey-halves-8k", "compare_passkey_halves_8k",
         "One half alone at the whole window, with searched ranks")):
    section(_name, _title, result=f"{_file}.json")(functools.partial(_passkey, key=_name))


@section("compare-feature-half", "Half the features: MatryoshkaKV against PCA, ThinK and SVD",
         "results/compare.json", "results/compare_think_half.json")
def compare_feature_half(data: Data) -> str | None:
    """Each feature-axis method keeping half its feature dimensions: rank 50% (PCA, MatryoshkaKV, SVD) or half
    the key channels (ThinK, values kept whole: 75% of the bytes)."""
    (main_path, main), (think_path, think) = data.result("compare.json"), data.result("compare_think_half.json")
    if main is None or think is None:
        return None
    picked = [r for r in main["rows"] if r["method"].split(":")[0] in FEATURE_METHODS and r.get("n")
              and r["params"].get("budget") == 0.5 and "only" not in r["params"]]
    picked += [r for r in think["rows"] if r["method"].startswith("think") and r.get("n")
               and r["params"].get("keep") == 0.5]
    return paragraphs(source_line(data, main_path, think_path), prose("compare-feature-half"),
                      _tasks_table(picked, [t for t in main["tasks"] if t in think["tasks"]]),
                      commands_line([main.get("command"), think.get("command")])) if picked else None


@section("precision-ladder", "A precision ladder on the Matryoshka bases: quality per stored bit",
         "results/ladder_trajectory.json", result="ladder_frontier.json")
def precision_ladder(data: Data, path, rec: dict) -> str:
    suite = rec["suite"]
    rows = [[r["family"], r["label"], num(r["measured_bits_per_element"], 2), num(r["kl_ood"], 3),
             num(r["kl_in_domain"], 3), pct(r["top1_ood"], 0)] for r in rec["rows"]]
    passkey = [[f"{p['length']:,}", "uncompressed" if p["bits"] is None else num(p["measured_bits_per_element"], 2),
                count(p["correct"], p["n"])] for p in rec["passkey"]]
    bench = [f"{c['label']}: {num(c['bits_per_element'], 2)} bits per element, KL {num(c['kl'], 3)}"
             for c in rec["compare_ppl"]]
    return paragraphs(prose("precision-ladder", suite, rec["layout"], n=len(suite["domains"])),
                      table(["family", "setting", "bits per element (measured)", "held-out KL", "in-domain KL",
                             "held-out top-1"], rows),
                      table(["passkey length", "bits per element", "correct"], passkey),
                      prose("precision-ladder-bench", n=rec["compare_ppl"][0]["n"]), bullets(bench))


@section("precision-ladder-whole", "The ladder with the first and the latest tokens kept whole, at equal bytes",
         result="ladder_frontier_whole.json")
def precision_ladder_whole(data: Data, path, rec: dict) -> str:
    suite, bits = rec["suite"], ["bits per element in all (measured)", "in the ladder"]
    rows = [[r["family"], r["label"], num(r.get("measured_bits_per_element"), 2),
             num(r.get("ladder_bits_per_element"), 2), num(r.get("kl_ood"), 3), pct(r.get("top1_ood"), 0),
             num(r.get("kl_in_domain"), 3), r.get("reason", "")] for r in rec["rows"]]
    passkey = [[f"{p['length']:,}", "uncompressed" if p["bits"] is None else f"ladder {p['bits']:g} bits in all",
                num(p.get("measured_bits_per_element"), 2), num(p.get("ladder_bits_per_element"), 2),
                count(p["correct"], p["n"]) if "correct" in p else p.get("reason", DASH)] for p in rec["passkey"]]
    return paragraphs(prose("precision-ladder-whole", rec, suite, n=len(suite["domains"])),
                      table(["family", "setting", *bits, "held-out KL", "held-out top-1", "in-domain KL", "note"], rows),
                      table(["passkey length", "setting", *bits, "correct"], passkey))


@section("precision-ladder-speed", "Decode speed and bytes held of the real ladder cache",
         result="bench_ladder_b4_c2048.json")
def precision_ladder_speed(data: Data, path, rec: dict) -> str:
    rows = [[r["cache"], num(r["planned_bits_per_element"], 2), num(r["measured_bits_per_element"], 2),
             f"{r['cache_bytes'] / 2 ** 20:,.1f}", num(r["decode_tokens_per_s"], 2),
             num(r["decode_tokens_per_cpu_s"], 2), num(r["speedup"], 2)] for r in rec["rows"]]
    return paragraphs(prose("precision-ladder-speed", rec["rows"][0], rec),
                      table(["cache", "bits per element (planned)", "bits per element (held)", "MiB held",
                             "decode tokens/s", "tokens per CPU-s", "x DynamicCache"], rows))


@section("precision-ladder-retrieval", "The ladder on the retrieval tasks at 4, 2 and 1 bits per element",
         "results/compare_ladder.json")
def precision_ladder_retrieval(data: Data) -> str | None:
    path, rec = data.result("compare_ladder.json")
    return _compare(data, path, rec, "precision-ladder-retrieval") if rec else None
