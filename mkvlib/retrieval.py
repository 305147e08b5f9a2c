"""Long-range retrieval generated offline: passkey prompts, exact-match scoring, and the budget where it breaks.

A passkey prompt hides one 5-digit key at a seeded depth in repetitive filler text and asks for it at the end
(built with the tokenizer's chat template when it has one, else as plain text; the answer is started with
"The pass key is" so that the digits come first). The model answers by greedy decoding (``generate`` with the KV
cache); an answer is right when its first run of digits is exactly the key. Simulated compression
(:func:`mkvlib.core.compress.attach`) works under ``generate``: the hook sees every layer's full key and value (cached
and new) at each step and projects them, the same as caching projected ones since the projection acts on
each token alone (tests/test_suite.py checks it against decoding without a cache).

    prompts = passkey_prompts(tokenizer, 1024, n=8)
    passkey_accuracy(model, prompts, tokenizer)["accuracy"]
    retrieval_curve(model, tokenizer, [Method("trained adaptive", "trained", "adaptive")], [0.75, 0.5])
"""
from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .compat import cache_kwargs

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
         "memorize it. I will quiz you about the important information there.")
NEEDLE = "The pass key is {key}. Remember it."
QUESTION = "What is the pass key? Answer with the number only."
ANSWER_PREFIX = "The pass key is"
DEFAULT_LENGTHS = (1024, 4096)
FAIL_FRACTION = 0.9   # retrieval fails below this fraction of the uncompressed model's accuracy


@dataclass(frozen=True)
class PasskeyPrompt:
    """One prompt: ``ids`` LongTensor (1, S) with S <= n_tokens, the 5-digit ``key`` (once in ``text``), and
    ``depth`` in [0, 1], where the key sits in the filler (0 = first, 1 = last)."""
    ids: torch.Tensor
    key: str
    depth: float
    n_tokens: int
    seed: int
    text: str


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_prompt(tokenizer, user: str, answer_prefix: str) -> str:
    """The prompt text: ``user`` as the user's turn of the tokenizer's chat template (plain text when it has none),
    then ``answer_prefix`` started as the assistant's reply, so that the answer is what comes next."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + answer_prefix
    return f"{user}\n{answer_prefix}"


def _render(tokenizer, haystack: str) -> str:
    return render_prompt(tokenizer, f"{INTRO}\n\n{haystack}\n\n{QUESTION}", ANSWER_PREFIX)


def _haystack(repeats: int, depth: float, key: str) -> str:
    units = [FILLER] * repeats
    units.insert(round(depth * repeats), NEEDLE.format(key=key))
    return " ".join(units)


def fit_prompt(tokenizer, n_tokens: int, build, unit: str = FILLER, what: str = "a passkey prompt") -> tuple[str, torch.Tensor]:
    """(text, ids (1, S)): ``build(repeats)`` with the most repeats of filler whose tokens fit in ``n_tokens``
    (S <= n_tokens, within one ``unit`` of it). ``build(0)`` is the prompt without filler; a ValueError when even
    that does not fit."""
    fixed, size = _count(tokenizer, build(0)), max(1, _count(tokenizer, unit + " "))
    if fixed > n_tokens:
        raise ValueError(f"{what} needs more than {fixed} tokens; asked for {n_tokens}")
    repeats = max(0, (n_tokens - fixed) // size)
    while repeats > 0 and _count(tokenizer, build(repeats)) > n_tokens:       # shrink until it fits ...
        repeats -= max(1, math.ceil((_count(tokenizer, build(repeats)) - n_tokens) / size))
        repeats = max(repeats, 0)
    while _count(tokenizer, build(repeats + 1)) <= n_tokens:                   # ... then fill what is left
        repeats += 1
    text = build(repeats)
    return text, torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)


def passkey_setting(seed: int) -> tuple[str, float]:
    """(key, depth) of the passkey prompt with ``seed``: the 5-digit key and where it sits in the filler."""
    rng = random.Random(f"passkey-{seed}")
    key = str(rng.randint(10000, 99999))
    return key, round(rng.uniform(0.0, 1.0), 4)


def passkey_prompt(tokenizer, n_tokens: int, seed: int = 0) -> PasskeyPrompt:
    """A passkey prompt of at most ``n_tokens`` tokens (within one filler sentence group of it), the same for the
    same (tokenizer, n_tokens, seed); the key and its depth come from ``seed``."""
    key, depth = passkey_setting(seed)
    text, ids = fit_prompt(tokenizer, n_tokens, lambda repeats: _render(tokenizer, _haystack(repeats, depth, key)))
    return PasskeyPrompt(ids, key, depth, n_tokens, seed, text)


def passkey_prompts(tokenizer, n_tokens: int, n: int = 8, seed: int = 0) -> list[PasskeyPrompt]:
    """``n`` prompts of about ``n_tokens`` tokens with seeds ``seed * 1000 + i`` (keys and depths vary)."""
    return [passkey_prompt(tokenizer, n_tokens, seed * 1000 + i) for i in range(n)]


def score_answer(answer: str, key: str) -> bool:
    """Exact match: the first run of digits in ``answer`` is ``key``."""
    found = re.search(r"\d+", answer)
    return found is not None and found.group(0) == key


@torch.no_grad()
def generate_answer(model, prompt: PasskeyPrompt, tokenizer, max_new_tokens: int = 8) -> str:
    """Greedy decoding with the KV cache; the decoded new tokens."""
    device = next(model.parameters()).device
    ids = prompt.ids.to(device)
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, temperature=None, top_p=None, top_k=None, use_cache=True,
                         pad_token_id=pad)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


def passkey_accuracy(model, prompts: list[PasskeyPrompt], tokenizer, max_new_tokens: int = 8) -> dict:
    """{accuracy, correct, n, answers}: exact-match accuracy of greedy answers to ``prompts`` (the model as it
    is: with compression attached, compressed)."""
    answers = [generate_answer(model, p, tokenizer, max_new_tokens) for p in prompts]
    correct = sum(score_answer(a, p.key) for a, p in zip(answers, prompts))
    return {"accuracy": correct / len(prompts), "correct": correct, "n": len(prompts), "answers": answers}


def answer_ids(tokenizer, prompt: PasskeyPrompt) -> torch.Tensor:
    """The key's tokens as they follow the prompt (" " + key, tokenized with the prompt so that the boundary is
    the one greedy decoding would produce), LongTensor (A,). A ValueError when the prompt's own tokens are not a
    prefix of the joint tokenization (a tokenizer that merges across the boundary)."""
    joint = tokenizer(prompt.text + " " + prompt.key, add_special_tokens=False)["input_ids"]
    n = prompt.ids.shape[1]
    if joint[:n] != prompt.ids[0].tolist() or len(joint) <= n:
        raise ValueError("the tokenizer merges the prompt's last token with the answer; the key's log-probability "
                         "is not defined for it here")
    return torch.tensor(joint[n:], dtype=torch.long)


def _key_scores(logp: torch.Tensor, ans: torch.Tensor, tokenizer) -> dict:
    """key_logp, first_margin, top and found (see :func:`key_margins`) from log-probabilities (A, V) before each key
    token."""
    return {"key_logp": round(logp.gather(1, ans[:, None]).sum().item(), 4),
            "first_margin": round((logp[0, ans[0]] - logp[0].max()).item(), 4),
            "top": tokenizer.decode([int(logp[0].argmax())]), "found": bool((logp.argmax(-1) == ans).all())}


def _with_means(scores: list[dict], keys=("key_logp", "first_margin")) -> dict:
    """{key: [per prompt], mean_key: mean} over the prompts' ``scores``."""
    out = {k: [g[k] for g in scores] for k in keys}
    out.update({f"mean_{k}": round(sum(out[k]) / max(len(scores), 1), 4) for k in ("key_logp", "first_margin")})
    return out


@torch.no_grad()
def key_margins(model, prompts: list[PasskeyPrompt], tokenizer) -> dict:
    """Teacher-forced view of the same prompts (the model as it is, compressed or not): one forward pass over
    prompt + key per prompt. Per prompt, ``key_logp`` is log p(the key's tokens | prompt) and ``first_margin``
    is log p(the key's first token) minus the largest log-probability at that position (0 when greedy decoding
    starts the key; negative: how far another token is ahead). ``top`` is the token greedy decoding picks there;
    ``found`` whether every key token is the most probable one given those before it (greedy decoding writes the
    key). Needs no cache, so it also scores hooks that must see each whole sequence (the ceiling's oracle).

    Exact match says only whether greedy decoding wrote the key; this separates a key that is lost (every digit
    improbable) from one still found but preceded by another opening (a first margin near 0, digits probable).
    Returns {"key_logp": [...], "first_margin": [...], "top": [...], "found": [...], "mean_key_logp",
    "mean_first_margin"}.
    """
    device = next(model.parameters()).device
    scores = []
    for p in prompts:
        ans = answer_ids(tokenizer, p).to(device)
        logits = model(torch.cat([p.ids.to(device), ans[None]], dim=1), use_cache=False).logits
        scores.append(_key_scores(logits[0, -len(ans) - 1:-1].float().log_softmax(-1), ans, tokenizer))
    return _with_means(scores, ("key_logp", "first_margin", "top", "found"))


# --- varied prompts: several wordings, 5- to 7-digit keys, a decoy key, held-out prose as filler -----------------

@dataclass(frozen=True)
class Wording:
    """One way to ask: the instruction, the key's sentence (``{key}``), the decoy's (``{decoy}``: a number for
    something else), the question and the answer's start (the key follows it after a space)."""
    intro: str
    needle: str
    decoy: str
    question: str
    answer_prefix: str


WORDINGS = (
    Wording(INTRO, NEEDLE, "The code for the side door is {decoy}.", QUESTION, ANSWER_PREFIX),
    Wording("Below is a long excerpt from a book. Somewhere in it a secret number has been written down, among "
            "other numbers that do not matter. Read carefully.", "The secret number is {key}. Keep it in mind.",
            "The number of the locker in the hall is {decoy}.",
            "What is the secret number? Reply with the digits only.", "The secret number is"),
    Wording("You are given a document. It contains the access code for the main vault; remember that code.",
            "The access code for the main vault is {key}.", "The access code for the garden shed is {decoy}.",
            "What is the access code for the main vault? Give only the code.", "The access code for the main vault is"),
    Wording("Read the following text. A password is hidden in it, and afterwards you will be asked for it.",
            "Note: the password is {key}.", "Note: the old telephone extension was {decoy}.",
            "What is the password mentioned in the text? Write just the number.", "The password is"),
    Wording("The text below hides a recall number among many unrelated sentences. Find the recall number.",
            "Important: the recall number is {key}. Do not forget it.",
            "By the way, the code for the side door is {decoy}.",
            "Which recall number was given in the text? Answer with the number alone.", "The recall number is"),
)
FILLER_CORPUS, FILLER_FALLBACK = "books-heldout", "pydoc-test"
KEY_DIGITS = (5, 6, 7)
SENTENCE_ENDS = (".", "!", "?", '."', '!"', '?"', ".'", ".)")


@dataclass(frozen=True)
class VariedPrompt(PasskeyPrompt):
    """A :class:`PasskeyPrompt` with a ``decoy`` key (same length, another value) at ``decoy_depth``, the index of
    its ``wording`` in :data:`WORDINGS`, and where its filler came from (``filler_source``)."""
    decoy: str = ""
    decoy_depth: float = 0.0
    wording: int = 0
    filler_source: str = ""


@functools.lru_cache(maxsize=4)
def _filler_words(corpus: str, data_root: str) -> tuple[tuple[str, ...], str]:
    from .corpora import CorpusNotFoundError, load_text

    try:
        return tuple(load_text(corpus).split()), corpus
    except CorpusNotFoundError:
        source = f"{FILLER_FALLBACK} (no data folder with {corpus}: MKV_DATA_DIR={data_root or 'unset'})"
        return tuple(load_text(FILLER_FALLBACK).split()), source


def filler_words(corpus: str = FILLER_CORPUS) -> tuple[tuple[str, ...], str]:
    """(words, source): held-out prose for filler, split on whitespace, and the name of where it came from:
    ``corpus`` from the data folder, else Python's documentation (``pydoc-test``, offline), named as a fallback."""
    from .corpora import data_dir

    return _filler_words(corpus, str(data_dir() or ""))


def _passage(words: tuple[str, ...], rng: random.Random, size: int) -> list[str]:
    """``size`` words from a seeded place in ``words`` (wrapping round), starting after a sentence's end."""
    start = rng.randrange(len(words))
    for i in range(start, min(start + 200, len(words) - 1)):
        if words[i].endswith(SENTENCE_ENDS):
            start = i + 1
            break
    return [words[(start + i) % len(words)] for i in range(size)]


def _slot(words: list[str], depth: float, taken: int | None = None) -> int:
    """The sentence boundary in ``words`` nearest to ``depth`` of the way through (other than ``taken``), or the
    word boundary there when no sentence ends."""
    m = len(words)
    ends = [i + 1 for i, w in enumerate(words) if w.endswith(SENTENCE_ENDS)] + [0]
    ends = [i for i in ends if i != taken] or [round(depth * m)]
    return min(ends, key=lambda i: (abs(i - depth * m), i))


def _varied_haystack(words: list[str], wording: Wording, key: str, decoy: str, depth: float,
                     decoy_depth: float) -> tuple[str, int, int]:
    """The filler with the key's and the decoy's sentences inserted: (text, key slot, decoy slot)."""
    at_key = _slot(words, depth)
    at_decoy = _slot(words, decoy_depth, taken=at_key)
    out = list(words)
    for at, sentence in sorted({at_key: wording.needle.format(key=key),
                                at_decoy: wording.decoy.format(decoy=decoy)}.items(), reverse=True):
        out.insert(at, sentence)                    # the later slot first: the earlier one keeps its index
    return " ".join(out), at_key, at_decoy


def _fit_words(tokenizer, n_tokens: int, build, most: int) -> int:
    """The most filler words m <= ``most`` whose prompt ``build(m)`` has at most ``n_tokens`` tokens (bisection)."""
    fixed = _count(tokenizer, build(0))
    if fixed > n_tokens:
        raise ValueError(f"a varied retrieval prompt needs more than {fixed} tokens; asked for {n_tokens}")
    lo, hi = 0, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _count(tokenizer, build(mid)) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _keys(rng: random.Random) -> tuple[str, str]:
    digits = rng.choice(KEY_DIGITS)
    key = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    decoy = key
    while decoy == key:
        decoy = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    return key, decoy


def varied_prompt(tokenizer, n_tokens: int, seed: int = 0, corpus: str = FILLER_CORPUS) -> VariedPrompt:
    """A retrieval prompt of at most ``n_tokens`` tokens (within one filler word of it), the same for the same
    (tokenizer, n_tokens, seed, filler text): a wording from :data:`WORDINGS`, a key of 5 to 7 digits at one depth,
    a decoy of as many digits at another (at least a quarter of the filler away), and a passage of held-out prose
    (:func:`filler_words`) as filler. Key and decoy each occur once in the text."""
    words, source = filler_words(corpus)
    rng = random.Random(f"varied-{seed}")
    index = rng.randrange(len(WORDINGS))
    wording = WORDINGS[index]
    depth = round(rng.uniform(0.0, 1.0), 4)
    decoy_depth = round((depth + rng.uniform(0.25, 0.75)) % 1.0, 4)
    passage = _passage(words, rng, max(n_tokens, 1))
    for _ in range(50):
        key, decoy = _keys(rng)
        if not any(key in w or decoy in w for w in passage):
            break
    else:
        raise ValueError(f"no key absent from the filler after 50 tries (seed {seed})")

    def build(m: int) -> str:
        haystack = _varied_haystack(passage[:m], wording, key, decoy, depth, decoy_depth)[0]
        return render_prompt(tokenizer, f"{wording.intro}\n\n{haystack}\n\n{wording.question}", wording.answer_prefix)

    m = _fit_words(tokenizer, n_tokens, build, len(passage))
    _, at_key, at_decoy = _varied_haystack(passage[:m], wording, key, decoy, depth, decoy_depth)
    text = build(m)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]], dtype=torch.long)
    where = (lambda i: round(i / m, 4)) if m else (lambda i: 0.0)
    return VariedPrompt(ids, key, where(at_key), n_tokens, seed, text, decoy, where(at_decoy), index, source)


def varied_prompts(tokenizer, n_tokens: int, n: int = 8, seed: int = 0) -> list[VariedPrompt]:
    """``n`` varied prompts of about ``n_tokens`` tokens with seeds ``seed * 1000 + i``."""
    return [varied_prompt(tokenizer, n_tokens, seed * 1000 + i) for i in range(n)]


PROMPT_KINDS = {"passkey": passkey_prompts, "varied": varied_prompts}


def build_prompts(kind: str, tokenizer, n_tokens: int, n: int = 8, seed: int = 0) -> list:
    """The prompts of one family: 'passkey' (one filler sentence repeated) or 'varied' (:func:`varied_prompt`)."""
    if kind not in PROMPT_KINDS:
        raise ValueError(f"unknown prompt family {kind!r}: one of {sorted(PROMPT_KINDS)}")
    return PROMPT_KINDS[kind](tokenizer, n_tokens, n, seed)


@torch.no_grad()
def answer_and_margin(model, prompt: PasskeyPrompt, tokenizer, max_new_tokens: int = 8) -> dict:
    """Greedy answer and :func:`key_margins` from one prefill: a forward pass over prompt + key keeps the cache,
    scores the key teacher-forced, then the cache is cut back to the prompt and decoding goes on greedily from the
    prompt's own prediction. Returns {answer, key_logp, first_margin, top} (same values as the two separately)."""
    device = next(model.parameters()).device
    ans = answer_ids(tokenizer, prompt).to(device)
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(torch.cat([prompt.ids.to(device), ans[None]], dim=1), **cache_kwargs(cache), use_cache=True,
                logits_to_keep=len(ans) + 1)
    logp = out.logits[0, :-1].float().log_softmax(-1)
    cache.crop(-len(ans))                                   # back to the prompt: transformers 5 counts removals
    eos = getattr(tokenizer, "eos_token_id", None)
    token, new = int(logp[0].argmax()), []
    while True:
        new.append(token)
        if len(new) >= max_new_tokens or token == eos:
            break
        step = model(torch.tensor([[token]], device=device), **cache_kwargs(cache), use_cache=True)
        token = int(step.logits[0, -1].argmax())
    return {"answer": tokenizer.decode(new, skip_special_tokens=True), **_key_scores(logp, ans, tokenizer)}


def score_prompts(model, prompts: list, tokenizer, max_new_tokens: int = 8) -> dict:
    """{accuracy, correct, n, answers, key_logp, first_margin, mean_key_logp, mean_first_margin, decoys}: exact
    match and the key's log-probability per prompt (:func:`answer_and_margin`); ``decoys`` counts answers that
    gave a prompt's decoy instead (None for prompts without one)."""
    got = [answer_and_margin(model, p, tokenizer, max_new_tokens) for p in prompts]
    answers = [g["answer"] for g in got]
    correct = sum(score_answer(a, p.key) for a, p in zip(answers, prompts))
    has_decoy = all(getattr(p, "decoy", "") for p in prompts)
    return {"accuracy": correct / len(prompts), "correct": correct, "n": len(prompts), "answers": answers,
            "decoys": sum(score_answer(a, p.decoy) for a, p in zip(answers, prompts)) if has_decoy else None,
            **_with_means(got)}


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% at z = 1.96) of a share ``correct / n``: honest at 0 and n, where the plain
    normal interval collapses to a point. With 8 prompts, 8/8 reads 68-100%, 4/8 reads 22-78%."""
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"a count needs 0 <= correct <= n and n >= 1, not {correct}/{n}")
    share, z2 = correct / n, z * z
    centre = (share + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(share * (1 - share) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def separated(a: tuple[int, int], b: tuple[int, int], z: float = 1.96) -> bool:
    """Whether two counts (correct, n) have Wilson intervals that do not overlap: only then is one said to
    retrieve more than the other."""
    (lo_a, hi_a), (lo_b, hi_b) = wilson_interval(*a, z=z), wilson_interval(*b, z=z)
    return hi_a < lo_b or hi_b < lo_a


def first_failure(rows: list[dict], fraction: float = FAIL_FRACTION) -> float | None:
    """The highest budget whose accuracy is below ``fraction`` of the uncompressed one (at any length), or None."""
    failing = [r["budget"] for r in rows if r["accuracy"] < fraction * r["base_accuracy"]]
    return max(failing) if failing else None


def _cell(acc: dict, margins: bool) -> dict:
    """The fields of a row (or of the uncompressed score) from :func:`passkey_accuracy` / :func:`score_prompts`."""
    keep = ("correct", "n") + (("mean_key_logp", "mean_first_margin", "key_logp", "decoys", "answers") if margins else ())
    return {k: acc[k] for k in keep}


def retrieval_curve(model, tokenizer, methods, budgets, lengths=DEFAULT_LENGTHS, n: int = 8, seed: int = 0,
                    max_new_tokens: int = 8, progress: bool = False, prompts: str = "passkey", margins: bool = False,
                    method_budgets: dict | None = None) -> dict:
    """Retrieval accuracy of each method at each budget and length, with the uncompressed score beside it.

    ``methods``: :class:`mkvlib.suite.Method` or tuples (label, projections[, allocation[, trajectory]]).
    ``prompts``: the family (:func:`build_prompts`); ``margins``: score with :func:`score_prompts` (the key's
    log-probability and decoys beside exact match; rows and ``base_rows`` gain those fields);
    ``method_budgets``: {method name: budgets} for methods measured at fewer budgets than ``budgets``.
    Returns {"base": {length: accuracy}, "rows": [{method, allocation, budget, length, accuracy, base_accuracy,
    correct, n}], "fails_at": {method: highest budget where accuracy < 90% of the uncompressed, or None},
    "fails_at_by_length": {method: {length: budget or None}}}.
    """
    from .core.env import progress_bar as tqdm

    from .core.compress import attach
    from .core.projections import resolve_projections
    from .suite import as_method

    score = (lambda ps: score_prompts(model, ps, tokenizer, max_new_tokens)) if margins else \
        (lambda ps: passkey_accuracy(model, ps, tokenizer, max_new_tokens))
    budgets = sorted(budgets, reverse=True)
    plans = []              # every method's ranks first: a budget no method can hold fails before any scoring
    for method in map(as_method, methods):
        mine = sorted((method_budgets or {}).get(method.name, budgets), reverse=True)
        proj = resolve_projections(method.projections, model)
        features = {(b, length): method.feature_budget(b, length) for b in mine for length in lengths}
        ranks = {f: method.ranks(model, proj, f) for f in dict.fromkeys(features.values())}   # once per budget
        plans.append((method, mine, proj, {key: ranks[f] for key, f in features.items()}))
    prompt_sets = {length: build_prompts(prompts, tokenizer, length, n, seed) for length in lengths}
    base_scores = {length: score(ps) for length, ps in tqdm(prompt_sets.items(), desc="base", disable=not progress)}
    base = {length: acc["accuracy"] for length, acc in base_scores.items()}
    rows = []
    for method, mine, proj, settings in plans:
        with attach(model, proj, settings[mine[0], lengths[0]], keep_first=method.keep_first,
                    keep_recent=method.keep_recent) as comp:
            for budget in tqdm(mine, desc=method.name, disable=not progress):
                for length, ps in prompt_sets.items():
                    comp.set_ranks(settings[budget, length])   # whole tokens: the budget counts bytes at this length
                    acc = score(ps)
                    rows.append({"method": method.name, "allocation": method.allocation, "budget": budget,
                                 "length": length, "accuracy": acc["accuracy"], "base_accuracy": base[length],
                                 **_cell(acc, margins)})
    labels = list(dict.fromkeys(r["method"] for r in rows))
    fails = {m: first_failure([r for r in rows if r["method"] == m]) for m in labels}
    by_length = {m: {length: first_failure([r for r in rows if r["method"] == m and r["length"] == length])
                     for length in lengths} for m in labels}
    out = {"base": base, "rows": rows, "fails_at": fails, "fails_at_by_length": by_length, "n": n, "seed": seed}
    if margins:
        out["base_rows"] = {length: _cell(acc, margins) for length, acc in base_scores.items()}
    if prompts != "passkey":
        out["prompts"] = prompts
        out["filler_source"] = sorted({p.filler_source for ps in prompt_sets.values() for p in ps})
        out["wordings"] = {length: [p.wording for p in ps] for length, ps in prompt_sets.items()}
    return out


def format_retrieval_table(result: dict) -> str:
    """Accuracy per method and budget (columns: lengths), the uncompressed score first, then where it fails."""
    lengths = list(result["base"])
    family = "varied-prompt" if result.get("prompts") == "varied" else "passkey"
    lines = [f"{family} retrieval ({result['n']} prompts per length, exact match)",
             f"{'method':<24} {'budget':>7}" + "".join(f" {f'{length} tok':>9}" for length in lengths),
             f"{'uncompressed':<24} {1.0:>7.3f}" + "".join(f" {result['base'][length]:>9.0%}" for length in lengths)]
    cell = {(r["method"], r["budget"], r["length"]): r for r in result["rows"]}
    for method in result["fails_at"]:
        for budget in sorted({r["budget"] for r in result["rows"] if r["method"] == method}, reverse=True):
            lines.append(f"{method:<24} {budget:>7.3f}" + "".join(
                f" {cell[(method, budget, length)]['accuracy']:>9.0%}" for length in lengths))
    for method, budget in result["fails_at"].items():
        where = "no tested budget" if budget is None else f"budget {budget:.3f}"
        lines.append(f"{method}: retrieval first fails (< {FAIL_FRACTION:.0%} of uncompressed) at {where}")
    return "\n".join(lines)


def _trajectory_label(path: str) -> str:
    """How a method with its own trajectory is named: its protected retrieval heads, its recall blocks' length, or
    else the file's name."""
    from .core.trajectory import Trajectory

    meta = Trajectory.load(path).meta
    kept, config = meta.get("protected"), meta.get("config") or {}
    if kept:
        return f"{kept['top']} retrieval heads whole"
    if config.get("recall_span"):
        return f"searched on {config['seq_len']:,}-token recall blocks"
    return Path(path).name.removesuffix(".trajectory.json")


def _parse_methods(args) -> tuple[list, dict]:
    """(methods, {name: budgets}) from ``--methods`` entries PROJECTIONS:ALLOCATION[:TRAJECTORY][@B1/B2...]."""
    from .core.ranks import Method
    from .suite import suite_label

    whole = f", {args.keep_first} first + {args.keep_recent} recent tokens whole" \
        if args.keep_first or args.keep_recent else ""
    methods, own = [], {}
    for entry in args.methods.split(","):
        spec, _, at = entry.partition("@")
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[1] != "adaptive"):
            raise SystemExit(f"--methods: {entry!r} is not PROJECTIONS:ALLOCATION[@BUDGET/BUDGET...] or "
                             "PROJECTIONS:adaptive:TRAJECTORY[@...]")
        proj, alloc = parts[:2]
        traj = parts[2] if len(parts) == 3 else (args.trajectory if alloc == "adaptive" else None)
        own_traj = f", {_trajectory_label(traj)}" if len(parts) == 3 else ""
        m = Method(f"{suite_label(proj)}, {alloc}{own_traj}{whole}", proj, alloc, traj, args.keep_first,
                   args.keep_recent)
        methods.append(m)
        if at:
            try:
                own[m.name] = [float(b) for b in at.split("/")]
            except ValueError:
                raise SystemExit(f"--methods: budgets after @ in {entry!r} must be numbers such as 0.5/0.375") from None
    return methods, own


def main(argv=None) -> int:
    """``python -m mkvlib.retrieval --methods pca:uniform,trained:adaptive --budgets ... --out FILE``: a
    :func:`retrieval_curve` record (data/results/retrieval.json)."""
    import argparse
    import sys
    import time

    from .commands.common import hardware
    from .core.io import write_json
    from .models import load_model

    p = argparse.ArgumentParser(prog="python -m mkvlib.retrieval", description=main.__doc__.split(": ", 1)[1])
    p.add_argument("--methods", default="pca:uniform,trained:uniform,trained:adaptive",
                   help="comma-separated PROJECTIONS:ALLOCATION, each optionally @B1/B2 (its own budgets); "
                   "PROJECTIONS:adaptive:TRAJECTORY gives one method its own trajectory")
    p.add_argument("--trajectory", default=None, help="trajectory of the adaptive methods (default: the shipped one)")
    p.add_argument("--budgets", default="0.75,0.5,0.375")
    p.add_argument("--lengths", default="1024,4096")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", default="passkey", choices=sorted(PROMPT_KINDS),
                   help="passkey: one filler sentence repeated; varied: wordings, 5-7 digit keys, a decoy, held-out prose")
    p.add_argument("--margins", action="store_true", help="also the key's log-probability (always with varied)")
    p.add_argument("--keep-first", type=int, default=0, help="first tokens also kept whole (budgets count bytes)")
    p.add_argument("--keep-recent", type=int, default=0, help="latest tokens also kept whole (budgets count bytes)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    methods, own = _parse_methods(args)
    budgets, lengths = [float(b) for b in args.budgets.split(",")], [int(n) for n in args.lengths.split(",")]
    model, tokenizer = load_model()
    start = time.time()
    result = retrieval_curve(model, tokenizer, methods, budgets, lengths, args.n, args.seed, prompts=args.prompts,
                             margins=args.margins or args.prompts != "passkey", method_budgets=own or None)
    write_json(args.out, dict(result, command="python -m mkvlib.retrieval " + " ".join(
        sys.argv[1:] if argv is None else argv), lengths=lengths, budgets=sorted(budgets, reverse=True),
        methods=[dict(label=m.name, projections=m.projections, allocation=m.allocation, trajectory=m.trajectory,
                      keep_first=m.keep_first, keep_recent=m.keep_recent,
                      **({"budgets": own[m.name]} if m.name in own else {})) for m in methods],
        wall_time_s=round(time.time() - start), hardware=hardware(model.device)))
    print(format_retrieval_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
