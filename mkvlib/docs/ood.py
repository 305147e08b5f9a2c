"""Results sections for the out-of-domain yardstick: the suite, passkey retrieval and the training routes.

Files (written by the measurements recorded inside them):

- ``data/results/ood_suite.json``: rows of :func:`mkvlib.suite.compare_suite` for each method and budget, on the
  out-of-domain suite and, beside it, in-domain text (the training mixture past the tokens trained on);
- ``data/results/retrieval.json``: :func:`mkvlib.retrieval.retrieval_curve` for the same methods;
- ``data/results/passkey_rank_mix.json``: passkey at 4k between two points of the shipped trajectory, with
  :func:`mkvlib.retrieval.key_margins` beside exact match;
- ``data/results/ood_routes.json``: starting points and objectives of training, each with its CPU time and its
  out-of-domain KL at 50% (notebook 02).
"""
from __future__ import annotations

from collections import Counter

from .markdown import code, count, num, pct, table
from .records import Data
from .results import commands_line, section, source_line


def _mean_rows(rec: dict, domain: str = "mean") -> dict:
    """{(method, target budget): row} of the mean rows (out of domain) or of one domain."""
    return {(r["method"], r["target_budget"]): r for r in rec["rows"] if r["domain"] == domain}


@section("ood-suite", "Out of domain: perplexity ratio and KL to the uncompressed model", "results/ood_suite.json",
         lead=True)
def ood_suite(data: Data) -> str | None:
    path, rec = data.result("ood_suite.json")
    if rec is None:
        return None
    ood, ind = _mean_rows(rec), _mean_rows(rec, "in-domain")
    budgets = rec["budgets"]
    cell = lambda r: (f"{num(r['perplexity_ratio'], 2)} / {num(r['kl_to_base'], 3)} / "    # noqa: E731
                      f"{pct(r['top1_agreement'], 0)}")
    headers = ["method"] + [f"{pct(b)}: ppl x / KL / top-1" for b in budgets] + ["in-domain KL at 50%"]
    rows = [[m] + [cell(ood[(m, b)]) if (m, b) in ood else "-" for b in budgets]
            + [num(ind[(m, 0.5)]["kl_to_base"], 3) if (m, 0.5) in ind else "-"]
            for m in [x["label"] for x in rec["methods"]]]
    note = (f"Mean over {len(rec['domains'])} held-out domains ({', '.join(rec['domains'])}), "
            f"{rec['tokens_per_domain']:,} tokens each in blocks of {rec['seq_len']}; perplexity as a multiple of "
            "the uncompressed model's, KL in nats per token, top-1 agreement with the uncompressed model. "
            "Adaptive: ranks from the shipped greedy-search trajectory. In-domain: text like the training text, "
            "never trained on.")
    return "\n\n".join([source_line(data, path), note, table(headers, rows),
                         commands_line([rec.get("command") or rec.get("script")])])


@section("ood-suite-domains", "Out of domain at 50%, per domain", "results/ood_suite.json", lead=True)
def ood_suite_domains(data: Data) -> str | None:
    path, rec = data.result("ood_suite.json")
    if rec is None:
        return None
    methods = [x["label"] for x in rec["methods"]]
    cell = {(r["method"], r["domain"]): r for r in rec["rows"] if r["target_budget"] == 0.5}
    rows = [[d, num(cell[(methods[0], d)]["base_perplexity"], 2)] +
            [f"{num(cell[(m, d)]['perplexity_ratio'], 2)} / {num(cell[(m, d)]['kl_to_base'], 3)}" for m in methods]
            for d in rec["domains"] + ["in-domain"] if (methods[0], d) in cell]
    return "\n\n".join([source_line(data, path, note="Perplexity ratio / KL at a 50% budget."),
                        table(["domain", "uncompressed ppl"] + methods, rows)])


@section("retrieval", "Passkey retrieval against budget", "results/retrieval.json", lead=True)
def retrieval(data: Data) -> str | None:
    path, rec = data.result("retrieval.json")
    if rec is None:
        return None
    lengths, budgets = rec["lengths"], rec["budgets"]
    cell = {(r["method"], r["budget"], r["length"]): r for r in rec["rows"]}
    base = " ".join(f"{int(k):,} tokens: {pct(v, 0)}." for k, v in sorted(rec["base"].items(), key=lambda x: int(x[0])))
    headers = ["method", "length"] + [pct(b) for b in budgets] + ["fails at (below 90% of uncompressed)"]
    rows = []
    for m in [x["label"] for x in rec["methods"]]:
        for n in lengths:
            fails = rec["fails_at_by_length"][m].get(str(n), rec["fails_at_by_length"][m].get(n))
            rows.append([m, f"{n:,}"] + [count(cell[(m, b, n)]["correct"], cell[(m, b, n)]["n"])
                                         if (m, b, n) in cell else "-" for b in budgets]
                        + [pct(fails) if fails is not None else "holds at every budget measured"])
    note = (f"Exact match of the 5-digit key (greedy decoding), {rec['n']} prompts per length, seed {rec['seed']}, "
            "with the 95% Wilson interval of each count; the prompts of a seed share their filler, so their "
            "outcomes are correlated and the intervals are a lower bound on the uncertainty. "
            f"Uncompressed: {base}")
    return "\n\n".join([source_line(data, path), note, table(headers, rows), commands_line([rec.get("script")])])


@section("ood-routes", "Starting points and objectives: out-of-domain KL at 50% against CPU time",
         "results/ood_routes.json", lead=True)
def ood_routes(data: Data) -> str | None:
    path, rec = data.result("ood_routes.json")
    if rec is None:
        return None
    headers = ["route", "CPU minutes", "OOD KL at 50%", "OOD ppl x at 50%", "in-domain KL at 50%", "command"]
    rows = [[r["route"], num(r["cpu_minutes"], 1), num(r["ood_kl_50"], 3), num(r["ood_ppl_50"], 2),
             num(r["in_domain_kl_50"], 3) if r.get("in_domain_kl_50") is not None else "-",
             f"`{r['command']}`" if r.get("command") else "not recorded"] for r in rec["routes"]]
    return "\n\n".join([source_line(data, path, note=rec.get("note", "")), table(headers, rows)])


@section("kl-by-position", "KL by position on long held-out text", "results/kl_by_position.json", lead=True)
def kl_by_position(data: Data) -> str | None:
    path, rec = data.result("kl_by_position.json")
    if rec is None:
        return None
    bins = rec["rows"][0]["bins"]
    rows = [[r["method"], pct(r["budget"])] + [num(k, 3) for k in r["kl"]] for r in rec["rows"]]
    note = (f"{rec['corpus']}, {rec['blocks'][0]} block(s) of {rec['blocks'][1]:,} tokens: KL per token of the "
            "predictions at these positions. Damage that grows with distance shows as a rising row.")
    return "\n\n".join([source_line(data, path), note,
                        table(["method", "budget"] + [f"positions {b}" for b in bins], rows),
                        commands_line([rec.get("script")])])


@section("recall-search", "A search calibrated on recall blocks: retrieval against out-of-domain KL",
         "results/recall_search.json", lead=True)
def recall_search(data: Data) -> str | None:
    path, rec = data.result("recall_search.json")
    if rec is None:
        return None
    methods = list(rec["trajectories"])
    budgets = sorted({r["budget"] for r in rec["rows"]}, reverse=True)
    cell = {(r["method"], r["budget"]): r for r in rec["rows"]}
    keys = {(p["method"], p["budget"], p["length"]): p for p in rec["passkey"]}
    lengths = sorted({p["length"] for p in rec["passkey"]})
    pk_budgets = sorted({p["budget"] for p in rec["passkey"]}, reverse=True)
    headers = (["method"] + [f"{pct(b)}: OOD KL (in-domain)" for b in budgets]
               + [f"passkey {n:,} at {pct(b)}" for n in lengths for b in pk_budgets])
    rows = [[m] + [f"{num(cell[(m, b)]['ood_kl'], 3)} ({num(cell[(m, b)]['in_domain_kl'], 3)})" for b in budgets]
            + [count(keys[(m, b, n)]["correct"], keys[(m, b, n)]["n"]) if (m, b, n) in keys else "-"
               for n in lengths for b in pk_budgets] for m in methods]
    base = ", ".join(f"{v['correct']}/{v['n']} at {int(k):,} tokens" for k, v in sorted(rec["passkey_base"].items(),
                                                                                    key=lambda kv: int(kv[0])))
    note = (f"{rec['what']}. OOD: mean KL over {len(rec['domains'])} held-out domains, {rec['tokens_per_domain']:,} "
            f"tokens each; passkey: exact match on the same prompts for every row, seed {rec['passkey_seed']} "
            f"(uncompressed: {base}). {rec['note']}.")
    return "\n\n".join([source_line(data, path), note, table(headers, rows),
                        commands_line([rec["search_commands"]["recall"], rec["script"]])])


@section("positions", "Where the text sits in the window: KL and passkey late in a long context",
         "results/positions.json", lead=True)
def positions(data: Data) -> str | None:
    path, rec = data.result("positions.json")
    if rec is None:
        return None
    offsets = rec["offsets"]
    cell = {(r["method"], r["offset"]): r for r in rec["rows"]}
    methods = [m["label"] for m in rec["methods"]]
    headers = ["method (uniform ranks)", "fitted on positions"] + [f"from {o:,}: KL (ppl x)" for o in offsets]
    fitted = {m["label"]: m["positions"] for m in rec["methods"]}
    rows = [[m, fitted[m]] + [f"{num(cell[(m, o)]['kl_to_base'], 3)} ({num(cell[(m, o)]['perplexity_ratio'], 2)})"
                              if (m, o) in cell else "-" for o in offsets] for m in methods]
    note = (f"The out-of-domain suite ({rec['domains']} domains, {rec['tokens_per_domain']:,} tokens each in blocks of "
            f"{rec['seq_len']}) at a {pct(rec['budget'], 0)} budget, every block placed at positions OFFSET, "
            "OFFSET + 1, ...: the uncompressed model gives the same predictions wherever the block sits (RoPE is "
            "relative), so every change along a row is the projections meeting rotary angles they were or were "
            "not fitted on.")
    parts = [source_line(data, path), note, table(headers, rows)]
    if rec.get("passkey"):
        keys = {(p["method"], p["budget"], p["length"]): p for p in rec["passkey"]}
        lengths = sorted({p["length"] for p in rec["passkey"]})
        budgets = sorted({p["budget"] for p in rec["passkey"]}, reverse=True)
        pk_methods = list(dict.fromkeys(p["method"] for p in rec["passkey"]))
        base = ", ".join(f"{v['correct']}/{v['n']} at {int(k):,}" for k, v in
                         sorted(rec["passkey_base"].items(), key=lambda kv: int(kv[0])))
        parts += [f"Passkey retrieval in the real compressed cache, by projections and allocation "
                  f"(exact match, uncompressed: {base}):",
                  table(["method"] + [f"{n:,} tokens at {pct(b)}" for n in lengths for b in budgets],
                        [[m] + [count(keys[(m, b, n)]["correct"], keys[(m, b, n)]["n"]) if (m, b, n) in keys else "-"
                                for n in lengths for b in budgets] for m in pk_methods])]
    if rec.get("passkey_shift"):
        shift = rec["passkey_shift"]
        parts.append(f"The same {shift['length']:,}-token passkey prompts ({shift['method']}, "
                     f"{pct(shift['budget'])}) placed from position 0 and later: "
                     + "; ".join(f"from {int(o):,}: {v['correct']}/{v['n']} (uncompressed {v['base_correct']}/{v['n']})"
                                 for o, v in sorted(shift["by_offset"].items(), key=lambda kv: int(kv[0]))) + ".")
    parts.append(commands_line(rec.get("commands", [])))
    return "\n\n".join(parts)


@section("passkey-rank-mix", "Passkey at 4,096 tokens between two points of the shipped trajectory",
         "results/passkey_rank_mix.json", lead=True)
def passkey_rank_mix(data: Data) -> str | None:
    path, rec = data.result("passkey_rank_mix.json")
    if rec is None:
        return None
    rows = []
    for r in rec["rows"]:
        opening, times = Counter(r["top"]).most_common(1)[0]      # ties: the first prompt's opening
        rows.append([r["setting"], pct(r["budget"]), count(r["correct"], r["n"]), num(r["mean_key_logp"], 2),
                     num(r["mean_first_margin"], 2), f"{opening!r} ({times}/{len(r['top'])})"])
    note = (f"{rec['what']}. Projections {code(rec['projections'])}, trajectory {code(rec['trajectory'])}. "
            "\"Mixed\" rows take the 75% point's ranks and lower one group of entries to the ranks the 50% point "
            "gives them. Key log p: the key's tokens given the prompt, mean over the prompts; first margin: the "
            "key's first token against the most likely one at the answer's first position (0: greedy decoding "
            "opens with the key).")
    return "\n\n".join([source_line(data, path), note,
                        table(["setting", "budget", "exact match", "key log p", "first margin",
                               "opening token (prompts)"], rows),
                        commands_line([rec.get("command")]) + " (the script is the file's `script` field; "
                        "`MKV_DATA_DIR` set)."])


@section("answers", "What compression does to answers: short factual prompts", "results/answers.json", lead=True)
def answers(data: Data) -> str | None:
    path, rec = data.result("answers.json")
    if rec is None:
        return None
    n, allocations = len(rec["prompts"]), rec["allocations"]
    cell = {}
    for r in rec["rows"]:
        cell.setdefault((r["budget"], r["allocation"]), []).append(r)
    headers = ["budget"] + [f"{a}: answers kept / token agreement" for a in allocations]
    rows = [[pct(b)] + [f"{sum(r['survives'] for r in cell[(b, a)])} of {n} / "
                        f"{pct(sum(r['token_agreement'] for r in cell[(b, a)]) / n, 0)}" for a in allocations]
            for b in sorted(rec["budgets"], reverse=True)]
    note = (f"Greedy continuations ({rec['new_tokens']} tokens) of {n} short prompts whose answer comes from the "
            "weights (e.g. \"The capital of France is\"), by the trained projections in simulated compression. An "
            "answer is kept when the compressed continuation holds the uncompressed model's answer word; token "
            "agreement: top-1 agreement on the uncompressed continuation, teacher-forced. Prompts: "
            + "; ".join(f"\"{p}\"" for p in rec["prompts"]) + ".")
    return "\n\n".join([source_line(data, path), note, table(headers, rows), commands_line([rec.get("command")])])
