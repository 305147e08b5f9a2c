"""What compression does to answers: greedy continuations of short factual prompts, uncompressed and compressed.

Each prompt's answer comes from the model's weights, not from its context. The uncompressed model's continuation
fixes the *answer word* (its first word that is not an article); the fact **survives** at a budget when the
compressed model's continuation still holds that word. Beside it, *token agreement*: the compressed model reads
the prompt and the uncompressed continuation (teacher forcing) and we count how often its most likely next token
is the uncompressed one's, the top-1 agreement of the suite on these few tokens.

    rows = fact_rows(model, tokenizer, "trained", [1.0, 0.5, 0.25], "adaptive")
    print(format_facts(rows))

``python -m mkvlib.answers --out FILE`` measures the shipped projections and writes a result record (the
README's example and notebook 03 read it). Introduced in notebook 03.
"""
from __future__ import annotations

import argparse
import re
import sys
import time

import torch

# Short prompts whose continuation is a fact the model knows uncompressed (checked by the record's rows).
FACT_PROMPTS = (
    "The capital of France is",
    "The largest planet in the solar system is",
    "The chemical formula of water is",
    "The opposite of hot is",
    "The Eiffel Tower is in",
    "Romeo and Juliet was written by",
    "The chemical symbol for gold is",
    "Monday, Tuesday, Wednesday, Thursday,",
    "One, two, three, four,",
    "The currency of Japan is the",
    "The sun rises in the",
    "The speed of light is about 300,000 kilometres per",
)
ARTICLES = {"a", "an", "the"}
WORD = re.compile(r"[A-Za-z0-9]+")


def answer_word(text: str) -> str:
    """The first word of ``text`` that is not an article, lower-cased ('' when it has none)."""
    words = [w.lower() for w in WORD.findall(text)]
    return next((w for w in words if w not in ARTICLES), "")


def survives(answer: str, text: str) -> bool:
    """Whether the answer word is one of ``text``'s words (case-insensitive); an empty answer never survives."""
    return bool(answer) and answer in {w.lower() for w in WORD.findall(text)}


def _greedy(model, tokenizer, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:]


@torch.no_grad()
def fact_rows(model, tokenizer, projections, budgets, allocation: str = "adaptive", prompts=FACT_PROMPTS,
              max_new_tokens: int = 8) -> list[dict]:
    """One row per (prompt, budget): the uncompressed and compressed greedy continuations (``max_new_tokens``
    each), the answer word, whether it survives, and the token agreement on the uncompressed continuation.
    ``projections``: 'pca', 'trained', a path or a Projections; ``allocation``: 'uniform' or 'adaptive' (ranks
    from the shipped trajectory)."""
    from .core.compress import attach
    from .core.projections import resolve_projections
    from .core.ranks import ranks_for

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    proj = resolve_projections(projections, model)
    settings = [ranks_for(model, proj, allocation, b) for b in budgets]
    device = next(model.parameters()).device
    rows = []
    with attach(model, proj, settings[0]) as comp:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
            comp.enabled = False
            base = _greedy(model, tokenizer, ids, max_new_tokens)
            base_text = tokenizer.decode(base, skip_special_tokens=True)
            forced = torch.cat([ids[0], base])[None]
            comp.enabled = True
            for budget, ranks in zip(budgets, settings):
                comp.set_ranks(ranks)
                text = tokenizer.decode(_greedy(model, tokenizer, ids, max_new_tokens), skip_special_tokens=True)
                guess = model(forced).logits[0, ids.shape[1] - 1:-1].argmax(-1)
                rows.append(dict(prompt=prompt, budget=float(budget), allocation=allocation, uncompressed=base_text,
                                 compressed=text, answer=answer_word(base_text),
                                 survives=survives(answer_word(base_text), text),
                                 token_agreement=float((guess == base).float().mean())))
    return rows


def survival_by_budget(rows: list[dict]) -> dict[float, float]:
    """{budget: share of prompts whose answer survives} for rows of one allocation."""
    out: dict[float, list] = {}
    for r in rows:
        out.setdefault(r["budget"], []).append(r["survives"])
    return {b: sum(v) / len(v) for b, v in sorted(out.items(), reverse=True)}


def lowest_surviving_budget(rows: list[dict], share: float = 1.0) -> float | None:
    """The lowest budget at which at least ``share`` of the answers survive, and at every budget above it."""
    lowest = None
    for budget, kept in survival_by_budget(rows).items():
        if kept < share:
            break
        lowest = budget
    return lowest


def format_facts(rows: list[dict], width: int = 34) -> str:
    """A text table: prompt, budget, the compressed continuation, survives, token agreement."""
    clip = lambda s: (s.replace("\n", " ").strip()[:width]).ljust(width)   # noqa: E731
    lines = [f"{'prompt':<{width}} {'budget':>6}  {'continuation':<{width}} {'kept':>4} {'agree':>5}"]
    last = None
    for r in rows:
        if r["prompt"] != last:
            lines.append(f"{clip(r['prompt'])} {'100%':>6}  {clip(r['uncompressed'])}")
            last = r["prompt"]
        lines.append(f"{'':<{width}} {r['budget']:>6.1%}  {clip(r['compressed'])} "
                     f"{'yes' if r['survives'] else 'no':>4} {r['token_agreement']:>5.0%}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mkvlib.answers", description="Greedy continuations of short "
                                "factual prompts, uncompressed and compressed, at several budgets.")
    p.add_argument("--projections", default="trained", help="'pca', 'trained' or a .safetensors file")
    p.add_argument("--allocation", default="adaptive,uniform", help="comma-separated: uniform and/or adaptive")
    p.add_argument("--budgets", default="0.875,0.75,0.625,0.5,0.375,0.25", help="comma-separated budgets")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens generated per continuation (default 8)")
    p.add_argument("--out", default=None, metavar="JSON", help="write the record atomically to this file")
    args = p.parse_args(argv)
    from .commands.common import hardware
    from .commands.eval import parse_allocations, parse_budgets
    from .core.io import write_json
    from .models import load_model

    budgets, allocations = parse_budgets(args.budgets), parse_allocations(args.allocation)
    model, tokenizer = load_model()
    start = time.time()
    rows = [r for a in allocations
            for r in fact_rows(model, tokenizer, args.projections, budgets, a, max_new_tokens=args.new_tokens)]
    for a in allocations:
        mine = [r for r in rows if r["allocation"] == a]
        print(f"{args.projections}, {a}: answers kept by budget "
              + ", ".join(f"{b:.1%} {k:.0%}" for b, k in survival_by_budget(mine).items()))
    print(format_facts([r for r in rows if r["allocation"] == allocations[0]]))
    if args.out:
        from .core.projections import resolve_projections
        command = "python -m mkvlib.answers " + " ".join(sys.argv[1:] if argv is None else argv)
        write_json(args.out, dict(what="greedy continuations of short factual prompts, uncompressed and "
                                  "compressed (mkvlib.answers)", command=command, model=model.mkv_name,
                                  projections=args.projections,
                                  fingerprint=resolve_projections(args.projections, model).fingerprint(),
                                  budgets=budgets, allocations=allocations, new_tokens=args.new_tokens,
                                  prompts=list(FACT_PROMPTS), rows=rows, wall_time_s=round(time.time() - start),
                                  hardware=hardware(model.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
