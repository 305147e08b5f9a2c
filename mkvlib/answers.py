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

``--facts capitals`` asks for many facts instead of twelve: "The capital of Peru is", one prompt per country
whose capital the data folder's World Factbook names (:func:`capital_prompts`), the answer being the capital's
longest word. A fact counts only where the uncompressed model gets it right (``known``). ``--context N`` puts N
tokens of held-out prose before each question (a different passage each time, in a chat turn that asks the
question as unrelated to it), so that the compressed cache holds more than the question, and
``--keep-first``/``--keep-recent`` keep tokens whole, a budget then counting the bytes stored at the prompt's
length, whole tokens included.
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


FACTBOOK = "training/cia_world_factbook.jsonl"
FILLER_CORPUS = "books-heldout"
CAPITAL_PROMPT = "The capital of {} is"


def capital_prompts(path=None) -> list[tuple[str, set]]:
    """(prompt, accepted answer words) for every country whose capital the World Factbook names: "The capital of
    Peru is" and {"lima"}. Several capitals (Bolivia's, South Africa's) give several accepted words. ``path``:
    the factbook JSON-lines file (default: the data folder's)."""
    from .corpora import data_dir, jsonl_rows

    if path is None:
        root = data_dir()
        if root is None or not (root / FACTBOOK).is_file():
            raise FileNotFoundError(f"the capitals probe reads {FACTBOOK} in the data folder: set MKV_DATA_DIR to "
                                    "a folder with the shared data layout")
        path = root / FACTBOOK
    prompts = []
    for _, row in jsonl_rows(path):
        country = re.search(r"\nconventional short form: ([^\n]+)", row.get("text", ""))
        capital = re.search(r"\nname: ([^\n]+)", row.get("text", ""))
        if not country or not capital or country.group(1).strip().lower() == "none":
            continue
        names = re.sub(r"\([^)]*\)|note - .*", "", capital.group(1))
        longest = (max(WORD.findall(part.lower()), key=len, default="") for part in re.split(r"[;,]", names))
        accepted = {w for w in longest if len(w) > 2}            # "La Paz": paz; "New Delhi": delhi
        if accepted and not accepted & {w.lower() for w in WORD.findall(country.group(1))}:   # not in the prompt
            prompts.append((CAPITAL_PROMPT.format(country.group(1).strip()), accepted))
    return prompts


def filler_passages(tokenizer, n: int, tokens: int, corpus: str = FILLER_CORPUS) -> list[torch.Tensor]:
    """``n`` different passages of ``tokens`` tokens each, cut one after another from held-out prose."""
    from .corpora import load_text

    ids = tokenizer(load_text(corpus), return_tensors="pt").input_ids[0]
    if ids.numel() < n * tokens:
        ids = ids.repeat(n * tokens // max(ids.numel(), 1) + 1)
    return [ids[i * tokens:(i + 1) * tokens] for i in range(n)]


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


def _prompt_ids(tokenizer, prompt: str, filler=None) -> torch.Tensor:
    """The prompt's token ids (1, n). With ``filler`` (token ids), a chat turn: the passage, then a question said
    to be unrelated to it ("what is the capital of Peru?" for a capitals prompt), and the prompt begun as the
    reply; a small model asked to go on from the bare passage mostly goes on with the passage."""
    if filler is None:
        return tokenizer(prompt, return_tensors="pt").input_ids
    from .retrieval import render_prompt

    capital = re.fullmatch(CAPITAL_PROMPT.format("(.+)"), prompt)
    question = f"what is the capital of {capital.group(1)}?" if capital else "complete the sentence I begin below."
    text = render_prompt(tokenizer, f"{tokenizer.decode(filler)}\n\nA question unrelated to the text above: {question}",
                         prompt)
    return tokenizer(text, return_tensors="pt").input_ids


def _feature_ranks(model, proj, allocation, budget, tokens, whole):
    """Ranks for ``budget`` of the bytes of ``tokens`` tokens with ``whole`` = (first, recent) tokens kept whole."""
    from .core.ranks import budget_for_bytes, ranks_for

    return ranks_for(model, proj, allocation, budget_for_bytes(budget, tokens, *whole) if any(whole) else budget)


@torch.no_grad()
def fact_rows(model, tokenizer, projections, budgets, allocation: str = "adaptive", prompts=FACT_PROMPTS,
              max_new_tokens: int = 8, fillers=None, expected=None, wholes=((0, 0),)) -> list[dict]:
    """One row per (prompt, tokens kept whole, budget): the uncompressed and compressed greedy continuations
    (``max_new_tokens`` each), the answer word, whether it survives, and the token agreement on the uncompressed
    continuation. ``projections``: 'pca', 'trained', a path or a Projections; ``allocation``: 'uniform' or
    'adaptive' (ranks from the shipped trajectory). ``fillers``: a passage (token ids) per prompt put before it.
    ``expected``: the accepted answer words per prompt; a row says whether the uncompressed model ``known`` it,
    and a fact it does not know is not compressed (its compressed fields are None). ``wholes``: (first, recent)
    tokens kept whole, a budget then being the bytes stored at the prompt's length."""
    from .core.compress import attach
    from .core.projections import resolve_projections
    from .core.ranks import budget_for_bytes

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    proj, rows = resolve_projections(projections, model), []
    device = next(model.parameters()).device
    all_ids = [_prompt_ids(tokenizer, prompt, None if fillers is None else fillers[i]).to(device)
               for i, prompt in enumerate(prompts)]
    shortest = min((ids.shape[1] for ids in all_ids), default=0)
    for whole, budget in ((w, b) for w in wholes if any(w) for b in budgets):
        budget_for_bytes(budget, shortest, *whole)          # a budget too small for the whole tokens fails here
    with attach(model, proj, 1.0) as comp:
        for i, (prompt, ids) in enumerate(zip(prompts, all_ids)):
            comp.enabled = False
            base = _greedy(model, tokenizer, ids, max_new_tokens)
            base_text = tokenizer.decode(base, skip_special_tokens=True)
            answer = answer_word(base_text)
            if expected is not None:       # the accepted answer the uncompressed model gave, if it gave one
                answer = next((w for w in WORD.findall(base_text.lower()) if w in expected[i]), None)
            comp.enabled = True
            for whole in wholes:
                comp.keep_whole(*whole)
                for budget in budgets:
                    row = dict(prompt=prompt, budget=float(budget), allocation=allocation, uncompressed=base_text,
                               answer=answer or "", prompt_tokens=ids.shape[1])
                    row.update({"whole": f"{whole[0]}+{whole[1]}"} if fillers is not None else {})
                    row.update({} if expected is None else dict(known=answer is not None))
                    if answer is None:
                        rows.append(dict(row, compressed=None, survives=None, token_agreement=None))
                        continue
                    comp.set_ranks(_feature_ranks(model, proj, allocation, budget, ids.shape[1], whole))
                    rows.append(dict(row, **_compressed(model, tokenizer, ids, base, answer, max_new_tokens)))
            comp.keep_whole()
    return rows


def _compressed(model, tokenizer, ids, base, answer, max_new_tokens) -> dict:
    """The compressed model's continuation of ``ids``, whether it holds ``answer``, and its top-1 agreement with
    the uncompressed continuation ``base`` (teacher-forced)."""
    text = tokenizer.decode(_greedy(model, tokenizer, ids, max_new_tokens), skip_special_tokens=True)
    guess = model(torch.cat([ids[0], base])[None]).logits[0, ids.shape[1] - 1:-1].argmax(-1)
    return dict(compressed=text, survives=survives(answer, text), token_agreement=float((guess == base).float().mean()))


def survival_by_budget(rows: list[dict]) -> dict[float, float]:
    """{budget: share of prompts whose answer survives} for rows of one allocation (of the facts the uncompressed
    model knows, where rows say so)."""
    out: dict[float, list] = {}
    for r in rows:
        if r.get("known", True):
            out.setdefault(r["budget"], []).append(r["survives"])
    return {b: sum(v) / len(v) for b, v in sorted(out.items(), reverse=True)}


def kept_facts(rows: list[dict]) -> list[dict]:
    """Per (tokens kept whole, allocation, budget): how many of the facts the uncompressed model knows are kept,
    of how many, and the mean token agreement on them; budgets high to low."""
    cells: dict = {}
    for r in rows:
        if r.get("known", True):
            cells.setdefault((r.get("whole", ""), r["allocation"], r["budget"]), []).append(r)
    return [dict(whole=w, allocation=a, budget=b, kept=sum(r["survives"] for r in v), known=len(v),
                 agreement=sum(r["token_agreement"] for r in v) / len(v))
            for (w, a, b), v in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2]))]


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


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m mkvlib.answers", description="Greedy continuations of factual "
                                "prompts, uncompressed and compressed, at several budgets.")
    p.add_argument("--projections", default="trained", help="'pca', 'trained' or a .safetensors file")
    p.add_argument("--allocation", default="adaptive,uniform", help="comma-separated: uniform and/or adaptive")
    p.add_argument("--budgets", default="0.875,0.75,0.625,0.5,0.375,0.25", help="comma-separated budgets")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens generated per continuation (default 8)")
    p.add_argument("--facts", choices=("short", "capitals"), default="short",
                   help="'short': twelve hand-picked prompts (default); 'capitals': one per country the data "
                        "folder's World Factbook names a capital for")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    p.add_argument("--context", type=int, default=0, help="tokens of held-out prose before each question")
    p.add_argument("--keep-first", type=int, default=0, help="first tokens kept whole, bytes counted (with "
                   "--context; the rows without whole tokens are measured beside, at the same bytes)")
    p.add_argument("--keep-recent", type=int, default=0, help="latest tokens kept whole, bytes counted")
    p.add_argument("--out", default=None, metavar="JSON", help="write the record atomically to this file")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1 or args.context < 0:
        p.error("--limit must be at least 1 and --context at least 0")
    if (args.keep_first or args.keep_recent) and args.context <= args.keep_first + args.keep_recent:
        p.error("tokens kept whole need a --context longer than them, or the whole prompt is kept whole")
    return args


def probe_prompts(tokenizer, args) -> tuple[list, list | None, list | None]:
    """(prompts, accepted answers or None, filler passages or None) for the command's options."""
    if args.facts == "capitals":
        pairs = capital_prompts()[:args.limit]
        prompts, expected = [q for q, _ in pairs], [sorted(a) for _, a in pairs]
    else:
        prompts, expected = list(FACT_PROMPTS)[:args.limit], None
    fillers = filler_passages(tokenizer, len(prompts), args.context) if args.context else None
    return prompts, expected, fillers


def main(argv=None) -> int:
    args = parse_args(argv)
    from .commands.common import hardware
    from .commands.eval import parse_allocations, parse_budgets
    from .core.io import write_json
    from .models import load_model
    from .core.projections import resolve_projections

    budgets, allocations = parse_budgets(args.budgets), parse_allocations(args.allocation)
    model, tokenizer = load_model()
    start = time.time()
    prompts, expected, fillers = probe_prompts(tokenizer, args)
    wholes = [(0, 0)] + [(args.keep_first, args.keep_recent)] * bool(args.keep_first or args.keep_recent)
    rows = [r for a in allocations
            for r in fact_rows(model, tokenizer, args.projections, budgets, a, prompts, args.new_tokens, fillers,
                               None if expected is None else [set(e) for e in expected], wholes)]
    known = sum(r.get("known", True) for r in rows if r["allocation"] == allocations[0]
                and r["budget"] == budgets[0] and r.get("whole") in (None, "0+0"))
    print(f"{len(prompts)} prompts, {known} answered right uncompressed" if expected else f"{len(prompts)} prompts")
    for a in allocations:
        for whole in sorted({r.get("whole") for r in rows}, key=str):
            mine = [r for r in rows if r["allocation"] == a and r.get("whole") == whole]
            print(f"{args.projections}, {a}{', whole ' + whole if whole else ''}: answers kept by budget "
                  + ", ".join(f"{b:.1%} {k:.0%}" for b, k in survival_by_budget(mine).items()))
    if args.facts == "short" and not args.context:
        print(format_facts([r for r in rows if r["allocation"] == allocations[0]]))
    if args.out:
        command = "python -m mkvlib.answers " + " ".join(sys.argv[1:] if argv is None else argv)
        what = ("greedy continuations of short factual prompts" if args.facts == "short" else
                "greedy continuations of 'The capital of X is' for the countries of the World Factbook")
        write_json(args.out, dict(what=what + ", uncompressed and compressed (mkvlib.answers)", command=command,
                                  model=model.mkv_name, projections=args.projections,
                                  fingerprint=resolve_projections(args.projections, model).fingerprint(),
                                  budgets=budgets, allocations=allocations, new_tokens=args.new_tokens,
                                  facts=args.facts, context=args.context, keep_first=args.keep_first,
                                  keep_recent=args.keep_recent, filler=FILLER_CORPUS if args.context else None,
                                  prompts=prompts, **({} if expected is None else dict(accepted=expected)),
                                  rows=rows, wall_time_s=round(time.time() - start), hardware=hardware(model.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
