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


@section("ood-suite", "Out of domain: perplexity ratio and KL to the uncompressed model", "results/ood_suite.json")
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


@section("ood-suite-domains", "Out of domain at 50%, per domain", "results/ood_suite.json")
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


@section("retrieval", "Passkey retrieval against budget", "results/retrieval.json")
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
    return "\n\n".join([source_line(data, path), note, table(headers, rows), commands_line([rec.get("command")])])


@section("ood-routes", "Starting points and objectives: out-of-domain KL at 50% against CPU time",
         "results/ood_routes.json")
def ood_routes(data: Data) -> str | None:
    path, rec = data.result("ood_routes.json")
    if rec is None:
        return None
    headers = ["route", "CPU minutes", "OOD KL at 50%", "OOD ppl x at 50%", "in-domain KL at 50%", "command"]
    rows = [[r["route"], num(r["cpu_minutes"], 1), num(r["ood_kl_50"], 3), num(r["ood_ppl_50"], 2),
             num(r["in_domain_kl_50"], 3) if r.get("in_domain_kl_50") is not None else "-",
             f"`{r['command']}`" if r.get("command") else "not recorded"] for r in rec["routes"]]
    return "\n\n".join([source_line(data, path, note=rec.get("note", "")), table(headers, rows)])


@section("positions", "Where the text sits in the window: KL and passkey late in a long context",
         "results/positions.json")
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
         "results/passkey_rank_mix.json")
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


@section("answers", "What compression does to answers: short factual prompts", "results/answers.json")
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


CEILING_METRICS = {"kl_to_base": "KL", "perplexity_ratio": "ppl x", "top1_agreement": "top-1"}


def _ceiling_value(metric: str, value: float) -> str:
    return pct(value, 0) if metric == "top1_agreement" else num(value, 2 if metric == "perplexity_ratio" else 3)


def _ceiling_where(cell, kinds, budgets) -> str:
    """Where the shipped projections sit with uniform ranks, from shipped PCA to the best in-sample basis, and
    what the oracles reach, in KL."""
    kl = {(m, b): r["kl_to_base"] for (m, a, b), r in cell.items() if a == "uniform"}
    labels = list(dict.fromkeys(m for m, _ in kl))
    shipped = [m for m in labels if kinds[m] == "shipped"]
    in_sample = [m for m in labels if kinds[m] == "in-sample"]
    oracles = [m for m in labels if kinds[m] == "oracle"]
    budgets = [b for b in budgets if all((m, b) in kl for m in shipped + in_sample)]
    if len(shipped) < 2 or not in_sample or not budgets:
        return ""
    start, ours = shipped[0], shipped[-1]
    best = {b: min(in_sample, key=lambda m: kl[(m, b)]) for b in budgets}
    clauses = []
    for b in budgets:
        gap = kl[(start, b)] - kl[(best[b], b)]
        share = pct((kl[(start, b)] - kl[(ours, b)]) / gap, 0) if gap > 0 else "none"
        clauses.append(f"{share} at {pct(b)} ({num(kl[(start, b)], 3)}, {num(kl[(ours, b)], 3)}, "
                       f"{num(kl[(best[b], b)], 3)}{'' if len(set(best.values())) == 1 else ': ' + best[b]})")
    names = f" ({best[budgets[0]]})" if len(set(best.values())) == 1 else ""
    text = (f"With uniform ranks {ours} closes, in KL, " + " and ".join(clauses) + f" of the gap between {start} "
            f"and the best in-sample basis{names}.")
    if oracles:
        values = "; ".join(f"{m} {' / '.join(num(kl[(m, b)], 3) for b in budgets)}" for m in oracles)
        beaten = [m for m in oracles if all(kl[(m, b)] > kl[(ours, b)] for b in budgets)]
        text += f" The per-sequence oracles reach, in KL at {' / '.join(pct(b) for b in budgets)}: {values}"
        if beaten:
            who = "both are" if len(beaten) == 2 else " and ".join(beaten) + (" is" if len(beaten) == 1 else " are")
            text += (f"; {who} worse than {ours} at every budget: no fixed basis reconstructs a sequence's keys "
                     "and values better, yet the best reconstruction is not the best output")
        text += "."
    searched_worse = [m for m in in_sample if all(cell[(m, "adaptive", b)]["kl_to_base"] > kl[(m, b)]
                                                  for b in budgets if (m, "adaptive", b) in cell)
                      and any((m, "adaptive", b) in cell for b in budgets)]
    if searched_worse == in_sample:
        text += (" Every in-sample basis does worse with the shipped search's ranks than with uniform ones: they "
                 "were fitted at the sampled ranks only, and the search spreads ranks over other values.")
    return text


def _ceiling_overfit(cell, kinds) -> str:
    """A note when an in-sample row predicts the suite better than the uncompressed model: it has fitted the text."""
    below = sorted({(m, r["perplexity_ratio"]) for (m, a, b), r in cell.items()
                    if kinds[m] == "in-sample" and r["perplexity_ratio"] < 1}, key=lambda x: x[1])
    if not below:
        return ""
    names = sorted({m for m, _ in below})
    return (f"In-sample, {' and '.join(names)} reach{'es' if len(names) == 1 else ''} a perplexity below the "
            f"uncompressed model's ({num(below[0][1], 2)}x at best) on the text "
            f"{'it was' if len(names) == 1 else 'they were'} "
            "fitted on: part of that ceiling is memorised text, so it is loose (no basis fitted elsewhere can be "
            "expected to reach it).")


def _ceiling_targets(rec, cell, kinds) -> list[str]:
    """One line per target of the record: the shipped value, the best ceiling row (a target with searched ranks
    against every allocation measured at its budget: a search may end at any of them), the best oracle row, and
    whether the target lies above every ceiling row measured."""
    ours = [m for m in dict.fromkeys(m for m, _, _ in cell) if kinds[m] == "shipped"][-1:]
    lines = []
    for t in rec.get("targets", []):
        metric, bound, at_most = t["metric"], t["bound"], t["direction"] == "at_most"
        meets = (lambda v: v <= bound) if at_most else (lambda v: v >= bound)   # noqa: E731
        pick = min if at_most else max
        ceiling = {(m, a): r[metric] for (m, a, b), r in cell.items() if b == t["budget"] and kinds[m] != "shipped"
                   and (a == "uniform" or t["allocation"] != "uniform")}
        shipped = cell.get((ours[0], t["allocation"], t["budget"])) if ours else None
        head = (f"- {pct(t['budget'])}, {'uniform' if t['allocation'] == 'uniform' else 'searched'} ranks: "
                f"{CEILING_METRICS[metric]} {'<=' if at_most else '>='} {_ceiling_value(metric, bound)}")
        if shipped is not None:
            head += f" (shipped: {_ceiling_value(metric, shipped[metric])})"
        if not ceiling:
            lines.append(f"{head}: no ceiling row measured at this budget.")
            continue
        best = pick(ceiling, key=ceiling.get)
        oracles = {k: v for k, v in ceiling.items() if kinds[k[0]] == "oracle"}
        verdict = ("met by the shipped projections" if shipped is not None and meets(shipped[metric]) else
                   "within the ceiling" if meets(ceiling[best]) else
                   "**lies above the ceiling**: no in-sample basis and no oracle measured reaches it")
        label = lambda k: f"{k[0]}, {'uniform' if k[1] == 'uniform' else 'searched'} ranks"   # noqa: E731
        text = f"{head}: {verdict} (best: {label(best)}, {_ceiling_value(metric, ceiling[best])}"
        if oracles and best not in oracles:
            top = pick(oracles, key=oracles.get)
            text += (f"; best oracle: {_ceiling_value(metric, oracles[top])}, "
                     f"{'which reaches it' if meets(oracles[top]) else 'short of it'}")
        lines.append(text + ").")
    return lines


@section("ceiling", "The ceiling of fixed projections: in-sample bases and the per-sequence oracle",
         "results/ceiling.json")
def ceiling(data: Data) -> str | None:
    path, rec = data.result("ceiling.json")
    if rec is None:
        return None
    kinds = {m["label"]: m["kind"] for m in rec["methods"]}
    cell = {(r["method"], r["allocation"], r["target_budget"]): r for r in rec["rows"] if r["domain"] == "mean"}
    budgets = rec["budgets"]
    headers = (["method", "ranks"] + [f"{pct(b)}: KL / ppl x / top-1" for b in budgets]
               + ["CPU minutes to fit (this row's step)"])
    rows = []
    for m in rec["methods"]:
        for allocation in m["allocations"]:
            rows.append([m["label"], "uniform" if allocation == "uniform" else "searched"]
                        + [f"{num(r['kl_to_base'], 3)} / {num(r['perplexity_ratio'], 2)} / "
                           f"{pct(r['top1_agreement'], 0)}" if (r := cell.get((m["label"], allocation, b))) else "-"
                           for b in budgets]
                        + [num(m["fit_cpu_s"] / 60, 1) if m.get("fit_cpu_s") is not None else "-"])
    searched = (f"searched ranks: each shipped projections' own trajectory, and for every other row the shipped "
                f"trajectory of {code(rec['searched_ranks'])}" if rec.get("searched_ranks") else "")
    note = (f"{rec['what']}. Mean over {len(rec['domains'])} held-out domain{'s' if len(rec['domains']) > 1 else ''} "
            f"({', '.join(rec['domains'])}), {rec['tokens_per_domain']:,} tokens "
            f"each in blocks of {rec['seq_len']}, the same blocks for every row; KL in nats per token, perplexity as "
            "a multiple of the uncompressed model's, top-1 agreement with it. In-sample rows are fitted on the very "
            "blocks they are judged on, fed from position 0 as the suite reads them, sampling the ranks "
            f"{', '.join(map(str, rec['schedule'])) or 'd/8, ..., d'}; the oracle replaces, per sequence and "
            "(layer, KV head), the keys and values by the best rank-r reconstruction from that sequence's own SVD "
            "(centred by its mean, added back; the second oracle row leaves values uncentred). It sees the "
            "sequence's future tokens and bounds the reconstruction error, not the KL" + (f"; {searched}" if searched
                                                                                          else "") + ".")
    where = _ceiling_where(cell, kinds, budgets)
    targets = _ceiling_targets(rec, cell, kinds)
    cpu = rec.get("cpu_time_s") or {}
    hw = rec.get("hardware") or {}
    load = (hw.get("load_average_start") or [None])[0]
    timing = (f"CPU time: {num(cpu.get('total', 0) / 60, 1)} minutes in all, {num(rec.get('wall_time_s', 0) / 60, 1)} "
              f"minutes wall ({hw.get('device')}, {hw.get('torch_threads')} torch thread(s), {hw.get('cpu_count')} "
              f"cores" + (f", load average {num(load, 1)} when it started" if load is not None else "") + ").")
    parts = [source_line(data, path), note, table(headers, rows), " ".join(t for t in (where, _ceiling_overfit(
        cell, kinds)) if t)]
    if targets:
        parts.append("The issue's targets against the ceiling (a target above every ceiling row is out of reach of "
                     "every fixed basis and oracle measured here):\n\n" + "\n".join(targets))
    return "\n\n".join(p for p in parts + [timing, commands_line([rec.get("command")])] if p)
