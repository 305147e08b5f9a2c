"""Results sections for the recorded runs: training of the projections (notebook 02), the greedy rank searches
(notebook 03) and the compressed cache's benchmarks (notebook 05)."""
from __future__ import annotations

from .markdown import DASH, code, either, mib, num, paragraphs, pct, table
from .records import Data, read_json
from .results import commands_line, commands_list, prose, readout_text, section, source_line

TRAJECTORIES = ("trajectories/*.json", "trajectories/*/*.json", "lora/*/trajectory.json")
RECORDS = ("projections/*.json", "projections/*/*.json")


def _kl_at(evals: list, step_index: int) -> str:
    rows = evals[step_index]["rows"] if evals else []
    return next((num(r["kl_to_base"], 3) for r in rows if abs(r["budget"] - 0.5) < 1e-9), DASH)


@section("training-runs", "Training runs of the projections", *RECORDS)
def training_runs(data: Data) -> str | None:
    records = sorted(data.training_records.items())
    rows = [[data.short(p), data.short(data.projections_file(r.get("init_fingerprint"))),
             " + ".join(r.get("corpora") or []), r.get("steps"), f"{r.get('tokens_seen'):,}",
             f"{cfg.get('kd_weight')} : {cfg.get('lm_weight')}", cfg.get("lr"), cfg.get("seed"),
             num(r.get("wall_time_s", 0) / 60, 0), (r.get("hardware") or {}).get("device"), _kl_at(r.get("evals"), 0),
             _kl_at(r.get("evals"), -1)] for p, r in records for cfg in [r.get("config") or {}]]
    return paragraphs(
        prose("training-runs"),
        source_line(data, *[data.root / (p[:-len(".safetensors")] + ".json") for p, _ in records],
                    note="(each `.json` beside its `.safetensors`)"),
        table(["projections", "initialised from", "corpora", "steps", "tokens seen", "kd_weight : lm_weight", "lr",
               "seed", "minutes", "device", "KL at 50%, start", "KL at 50%, end"], rows, "lllrrrrrrlrr"),
        commands_list({data.short(p): r["command"] for p, r in records}, "the records")) if records else None


@section("training-evals", "Held-out KL and perplexity ratio during training", *RECORDS)
def training_evals(data: Data) -> str | None:
    records = {p: r for p, r in sorted(data.training_records.items()) if r.get("evals")}
    budgets = sorted({row["budget"] for r in records.values() for e in r["evals"] for row in e["rows"]}, reverse=True)
    rows = [[data.short(p), e["step"], e["rows"][0].get("tokens", DASH)] + [
        f"{num(at[b]['kl_to_base'], 3)} / {num(at[b]['perplexity_ratio'], 2)}x" if b in at else DASH for b in budgets]
        for p, r in records.items() for e in r["evals"] for at in [{row["budget"]: row for row in e["rows"]}]]
    head = ["projections", "step", "tokens", *[pct(b, None) for b in budgets]]
    return paragraphs(prose("training-evals"), table(head, rows)) if records else None


def _search_quality_part(data: Data, fingerprint: str, adapter: str | None, paths: list[str]) -> list[str]:
    """The caption and the table of trajectories whose evaluations are comparable."""
    evals = {p: data.trajectories[p]["evaluations"]["rows"] for p in paths}
    budgets = sorted({r["budget"] for rows in evals.values() for r in rows if r["budget"] < 1}, reverse=True)

    def row(label: str, rows: list, allocation: str) -> list[str]:
        at = {r["budget"]: r for r in rows if r["allocation"] == allocation}
        return [label] + [either(lambda r: f"{num(r['perplexity'])} / {num(max(r['kl_to_base'], 0.0), 3)}", at.get(b),
                                 DASH) for b in budgets]
    model = f", adapter {adapter} merged in ({data.bundle_with_adapter(adapter) or 'not committed'})" if adapter else ""
    return [f"Projections {code(data.short(data.projections_file(fingerprint)))} (fingerprint {fingerprint}){model}; "
            f"{readout_text(data.trajectories[paths[0]]['evaluations'])}; uncompressed perplexity "
            f"{num(evals[paths[0]][0]['base_perplexity'], 2)}.",
            table(["ranks", *[pct(b, None) for b in budgets]], [row("uniform", evals[paths[0]], "uniform")]
                  + [row(f"adaptive: {code(p)}", evals[p], "adaptive") for p in paths])]


@section("search-quality", "Adaptive against uniform ranks: perplexity / KL along each search trajectory",
         *TRAJECTORIES)
def search_quality(data: Data) -> str | None:
    groups: dict[tuple, list[str]] = {}     # comparable: same projections, model (adapter) and held-out text
    for path, t in sorted(data.trajectories.items(), key=lambda kv: (data.bundle_of(data.root / kv[0]) is not None,
                                                                     kv[0])):
        if (ev := t.get("evaluations") or {}).get("rows"):
            text = (ev.get("corpus"), tuple(ev.get("domains") or ()), ev.get("tokens"), ev.get("seq_len"))
            groups.setdefault((t["fingerprint"], ((t.get("meta") or {}).get("adapter") or {}).get("weights_hash"),
                               text), []).append(path)
    parts = [p for (fp, adapter, _), paths in groups.items() for p in _search_quality_part(data, fp, adapter, paths)]
    return paragraphs(prose("search-quality"), *parts) if parts else None


@section("search-settings", "Search trajectories: settings and cost", *TRAJECTORIES)
def search_settings(data: Data) -> str | None:
    found = sorted(data.trajectories.items())
    rows = [[code(path), data.short(data.projections_file(t["fingerprint"])),
             meta.get("calibration_corpus") or cfg.get("corpus"), meta.get("calibration_tokens"), cfg.get("strategy"),
             cfg.get("step"), cfg.get("min_rank"), either(lambda b: pct(b, None), cfg.get("stop_budget"), DASH),
             either(str, cfg.get("max_spread"), DASH), cfg.get("nll_weight", 0.0), cfg.get("batched"),
             cfg.get("proxy_refresh"), len(t.get("steps") or []), num(meta.get("seconds", 0) / 60, 0)]
            for path, t in found for meta in [t.get("meta") or {}] for cfg in [meta.get("config") or {}]]
    return paragraphs(prose("search-settings"),
                      table(["trajectory", "projections", "calibration", "tokens", "strategy", "step", "floor", "stop",
                             "max spread", "nll weight", "batched", "proxy refresh", "steps", "minutes"], rows,
                            "lllrl" + "r" * 9),
                      commands_list({p: (t.get("meta") or {}).get("command") for p, t in found},
                                    "each trajectory's `meta`")) if found else None


def bench_section(name: str, title: str, pattern: str, key: str = ""):
    """Register ``fn(record) -> (note, body)`` for every results file matching ``pattern``: each with its source,
    machine and command; the prose ``key`` first, where given; left out while no file matches."""
    def add(fn):
        def render(data: Data) -> str | None:
            parts = []
            for path in sorted(data.results.glob(pattern)):
                head, body = fn(obj := read_json(path))
                machine = f"Machine: {obj['machine']}." if obj.get("machine") else "Machine: not recorded."
                parts += [f"{source_line(data, path)} {head}{machine}", body, commands_line([obj.get("command")])]
            return paragraphs(prose(key) if key else "", *parts) if parts else None
        return section(name, title, f"results/{pattern}")(render) and fn
    return add


@bench_section("bench-decode", "Decode speed: compressed cache against DynamicCache and quanto", "bench_decode*.json",
               "bench-decode")
def bench_decode(obj: dict) -> tuple[str, str]:
    return "", table(
        ["cache", "budget", "context", "batch", "tokens/s", "speed-up", "tokens/CPU-s", "speed-up (CPU)", "cache"],
        [[r["cache"], either(lambda b: pct(b, None), r.get("budget"), DASH), r["context"], r["batch"],
          num(r["decode_tokens_per_s"], 2), num(r["speedup"], 2), num(r.get("decode_tokens_per_cpu_s"), 2),
          num(r.get("speedup_cpu"), 2), mib(r.get("cache_bytes"))] for r in obj["rows"]])


@bench_section("bench-memory", "Peak memory of one generate() call", "bench_memory.json")
def bench_memory(obj: dict) -> tuple[str, str]:
    check = obj.get("verification")
    return "", paragraphs(
        table(["cache", "budget", "batch", "context", "prefill s", "decode tokens/s", "cache", "peak growth", "model"],
              [[r["kind"], pct(r["budget"], None), r["batch"], r["context"], num(r["prefill_s"]),
                num(r["decode_tokens_per_s"], 3), mib(r["cache_bytes"]), mib(r["peak_memory_bytes"]),
                mib(r["model_memory_bytes"])] for r in obj["runs"]]),
        prose("bench-memory", predicted=mib(check["predicted_peak_bytes"]), run=check["run"],
              measured=mib(check["measured_peak_bytes"]), error=pct(check["relative_error"])) if check else "")


@section("bench-capacity", "What fits in a fixed memory limit", "results/bench_memory*.json",
         result="bench_memory.json")
def bench_capacity(data: Data, path, obj) -> str:
    capacity = dict(obj.get("capacity") or {})
    capacity.update({k.removeprefix("capacity_"): v for k, v in obj.items() if k.startswith("capacity_")})
    kinds = [k for k in next(iter(capacity.values())) if k != "ratio"]
    rows = [[name, f"{c[kinds[0]]['limit_bytes'] / 2 ** 30:g} GiB", c[kinds[0]]["context"]]
            + [c[k]["max_batch"] for k in kinds] + [num(c["ratio"], 2)] for name, c in capacity.items()]
    return paragraphs(prose("bench-capacity"),
                      table(["cache", "fixed", "per sequence", "bytes per token"],
                            [[k, mib(m["fixed_bytes"]), mib(m["per_sequence_bytes"]), f"{m['bytes_per_token']:,.0f}"]
                             for k, m in obj["memory_models"].items()]),
                      table(["case", "limit", "context"] + [f"max batch, {k}" for k in kinds] + ["ratio"], rows))


@bench_section("bench-profile", "Where a decode step spends its time", "bench_profile*.json")
def bench_profile(obj: dict) -> tuple[str, str]:
    prof = obj["profile"]
    ops = sorted({op for p in prof.values() for op in p if op != "total_s_per_step"},
                 key=lambda op: (-sum(p.get(op, 0.0) for p in prof.values()), op))
    rows = [[code(op)] + [num(p.get(op), 3) for p in prof.values()] for op in ops]
    return "Self CPU seconds per decode step of the top operators. ", table(
        ["operator", *prof], rows + [["total per step"] + [num(p["total_s_per_step"], 3) for p in prof.values()]])


@bench_section("bench-cli", "One `mkv bench` run", "bench_cli*.json")
def bench_cli(obj: dict) -> tuple[str, str]:
    r, kinds = obj["result"], {"compressed": "", "dynamic": "baseline_", "quanto": "quantized_"}
    metrics = [("decode tokens/s", "decode_tokens_per_s", lambda v: num(v, 3)), ("cache", "cache_bytes", mib),
               ("peak memory growth", "peak_memory_bytes", mib), ("prefill s", "prefill_s", num)]
    return (f"Projections {r['projections']} at {pct(r['budget'], None)} ({r['allocation']}), batch {r['batch']} "
            f"x context {r['context']}, {r['new_tokens']} new tokens, {r['device']} {r['dtype']}. ",
            table(["", *kinds], [[label] + [fmt(r.get(p + key)) for p in kinds.values()]
                                 for label, key, fmt in metrics]))
