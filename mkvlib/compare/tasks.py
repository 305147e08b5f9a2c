"""The tasks of the comparison bench: long-context retrieval generated offline, and perplexity/KL on held-out text.

Retrieval tasks (exact match of greedy answers, :func:`score_item`), each item deterministic for (tokenizer,
length, seed), its answer in the context exactly once by construction:

- ``passkey``: one 5-digit key in repetitive filler (:mod:`mkvlib.retrieval`);
- ``niah``: multi-key needle in a haystack: several "The special magic number for <word> is <7 digits>." needles
  at seeded depths; one word's number is asked;
- ``vt``: variable tracking: a chain ``QWERT = 12345. ZXCVB = QWERT.`` in the filler beside a distractor chain
  holding another value; asked: the value of the chain's last variable (one hop by default, the form the 135M
  instruct model answers uncompressed; ``hops`` makes it longer).

``ppl`` items are blocks of the out-of-domain suite's held-out text (:func:`mkvlib.suite.suite_blocks`): the first
``length - TARGET_TOKENS`` tokens are the prefix the method stores, the last :data:`TARGET_TOKENS` are scored
(perplexity, and KL against the uncompressed model on the same call; :mod:`mkvlib.compare.run`).

    items = make_items("niah", tokenizer, 1024, n=4)
    items[0].answer in items[0].text                  # once
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch

from .. import retrieval
from ..retrieval import FILLER, fit_prompt, render_prompt

RETRIEVAL_TASKS = ("passkey", "niah", "vt")
TASKS = ("ppl",) + RETRIEVAL_TASKS
TASK_VERSION = {"ppl": 1, "passkey": 1, "niah": 1, "vt": 1}   # bump when a generator changes: keys stored results
TARGET_TOKENS = 128          # scored tokens of a ppl item (the rest of the block is the stored prefix)
MAX_NEW_TOKENS = 10          # greedy tokens generated for a retrieval answer
CANNOT_DO = 0.5              # a task whose uncompressed accuracy is below this is flagged "model cannot do it"

INTRO = ("There is important information hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there.")
WORDS = ("apple", "river", "candle", "mountain", "violin", "garden", "rocket", "window", "falcon", "pepper",
         "island", "marble", "lantern", "tiger", "copper", "meadow", "harbor", "feather", "castle", "orange")
NIAH_NEEDLE = "The special magic number for {word} is {value}."
NIAH_QUESTION = "What is the special magic number for {word}? Answer with the number only."
NIAH_ANSWER = "The special magic number for {word} is"
VT_INTRO = ("Memorize and track the chain of variable assignments hidden in the following text.")
VT_SET = "{name} = {value}."
VT_COPY = "{name} = {other}."
VT_QUESTION = "What is the value of {name}? Answer with the number only."
VT_ANSWER = "{name} ="


@dataclass(frozen=True)
class Item:
    """One task item: ``ids`` (1, S) the prompt (retrieval) or the whole block (ppl), ``answer`` the exact text
    expected (digits; '' for ppl), ``meta`` what varies (depth of the needle, domain of the block, ...)."""
    task: str
    length: int
    index: int
    seed: int
    ids: torch.Tensor
    answer: str
    text: str = ""
    meta: dict = field(default_factory=dict)


def item_seed(seed: int, index: int) -> int:
    return seed * 1000 + index


def _spread(units: list, needles: list, depths: list) -> list:
    """``units`` with each needle inserted at its depth (fraction of the filler), in order of depth."""
    out = list(units)
    for needle, depth in sorted(zip(needles, depths), key=lambda x: x[1], reverse=True):
        out.insert(round(depth * len(units)), needle)
    return out


def _distinct_numbers(rng: random.Random, count: int, digits: int) -> list[str]:
    """``count`` numbers of ``digits`` digits, none a substring of another (so each occurs once in the text)."""
    out: list[str] = []
    while len(out) < count:
        v = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
        if all(v not in o and o not in v for o in out):
            out.append(v)
    return out


def needle_prompt(tokenizer, length: int, intro: str, question: str, answer_start: str, needles: list,
                  depths: list, what: str) -> tuple[str, torch.Tensor]:
    """(text, ids) of a prompt of ``length`` tokens: ``intro``, filler with each needle at its depth, ``question``,
    and the assistant's answer begun with ``answer_start``."""
    def build(repeats: int):
        hay = " ".join(_spread([FILLER] * repeats, needles, depths))
        return render_prompt(tokenizer, f"{intro}\n\n{hay}\n\n{question}", answer_start)
    return fit_prompt(tokenizer, length, build, what=what)


def passkey_item(tokenizer, length: int, index: int, seed: int = 0) -> Item:
    p = retrieval.passkey_prompt(tokenizer, length, item_seed(seed, index))
    return Item("passkey", length, index, seed, p.ids, p.key, p.text, {"depth": p.depth})


def niah_item(tokenizer, length: int, index: int, seed: int = 0, keys: int = 4) -> Item:
    """``keys`` needles (distinct words, distinct 7-digit numbers) at seeded depths; one of them is asked."""
    rng = random.Random(f"niah-{item_seed(seed, index)}")
    words = rng.sample(WORDS, keys)
    values = _distinct_numbers(rng, keys, 7)
    depths = [round(rng.uniform(0.0, 1.0), 4) for _ in range(keys)]
    asked = rng.randrange(keys)
    needles = [NIAH_NEEDLE.format(word=w, value=v) for w, v in zip(words, values)]
    text, ids = needle_prompt(tokenizer, length, INTRO, NIAH_QUESTION.format(word=words[asked]),
                              NIAH_ANSWER.format(word=words[asked]), needles, depths, "a multi-key needle prompt")
    return Item("niah", length, index, seed, ids, values[asked], text,
                {"depth": depths[asked], "keys": keys, "word": words[asked]})


def _var_name(rng: random.Random, taken: set) -> str:
    while True:
        name = "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(5))
        if name not in taken:
            taken.add(name)
            return name


def vt_item(tokenizer, length: int, index: int, seed: int = 0, hops: int = 1, distractors: int = 1) -> Item:
    """A chain of ``hops + 1`` variables from a 5-digit value (``A = 12345. B = A.``, its assignments in order and
    side by side) at a seeded depth, and ``distractors`` chains of other values at other depths; asked: the value
    of the asked chain's last variable. The value is in the text once; answering it takes following the chain
    past the distractor's (spread-out assignments defeat the 135M model even uncompressed, so they stay together)."""
    if hops < 1:
        raise ValueError(f"a variable chain has at least one hop (B = A), not {hops}")
    rng = random.Random(f"vt-{item_seed(seed, index)}")
    taken: set = set()
    values = _distinct_numbers(rng, 1 + distractors, 5)
    chains = [[_var_name(rng, taken) for _ in range(hops + 1)] for _ in values]
    needles = [" ".join([VT_SET.format(name=c[0], value=v)] +
                        [VT_COPY.format(name=c[k], other=c[k - 1]) for k in range(1, hops + 1)])
               for c, v in zip(chains, values)]
    depths = [round(rng.uniform(0.0, 1.0), 4) for _ in needles]
    last = chains[0][-1]
    text, ids = needle_prompt(tokenizer, length, VT_INTRO, VT_QUESTION.format(name=last), VT_ANSWER.format(name=last),
                              needles, depths, "a variable-tracking prompt")
    return Item("vt", length, index, seed, ids, values[0], text,
                {"depth": depths[0], "hops": hops, "distractors": distractors, "variable": last})


def ppl_items(tokenizer, length: int, n: int, seed: int = 0) -> list[Item]:
    """``n`` blocks of ``length`` tokens from the out-of-domain suite, domains in turn (item i: domain i mod D,
    block i // D of it). ``seed`` shifts which block of each domain is taken."""
    from ..suite import available_domains, suite_blocks

    if length <= TARGET_TOKENS + 1:
        raise ValueError(f"a ppl item scores the last {TARGET_TOKENS} tokens after a prefix: length must exceed "
                         f"{TARGET_TOKENS + 1}, not {length}")
    domains = available_domains(note=False)
    per_domain = -(-n // max(1, len(domains))) + seed
    blocks = suite_blocks(tokenizer, length * per_domain, seq_len=length, domains=domains)
    domains = list(blocks)
    items = []
    for i in range(n):
        domain = domains[i % len(domains)]
        b = blocks[domain]
        k = (i // len(domains) + seed) % b.shape[0]
        items.append(Item("ppl", length, i, seed, b[k:k + 1].clone(), "", "", {"domain": domain, "block": int(k)}))
    return items


GENERATORS = {"passkey": passkey_item, "niah": niah_item, "vt": vt_item}


def make_items(task: str, tokenizer, length: int, n: int, seed: int = 0) -> list[Item]:
    """``n`` items of ``task`` at ``length`` tokens (the same for the same arguments)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose from {', '.join(TASKS)}")
    if n < 1:
        raise ValueError(f"n (items per task and length) must be at least 1, not {n}")
    if task == "ppl":
        return ppl_items(tokenizer, length, n, seed)
    return [GENERATORS[task](tokenizer, length, i, seed) for i in range(n)]


def score_item(answer_text: str, item: Item) -> bool:
    """Exact match: the first run of digits in the generated text is the item's answer."""
    found = re.search(r"\d+", answer_text)
    return found is not None and found.group(0) == item.answer
