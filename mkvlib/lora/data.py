"""Supervised fine-tuning data: (prompt, response) pairs, tokenised into blocks with a loss mask.

Sources: ARC-Easy from the data directory (the offline default: its validation split trains, its test split is
what lm-eval scores), any lm-eval task (its own ``doc_to_text`` / ``doc_to_target``), or a JSON-lines file of
``{"prompt": ..., "response": ...}``. Introduced in notebook 06.

Tokenised layout: examples are packed one after another (``prompt + response + eos``) into rows of ``seq_len``
tokens (or one example per row with ``pack=False``), right-padded. The mask (N, T) is 1 from the last prompt
token through the end of the response, so that the Trainer's loss (which counts a next-token target where it
and its input are both 1) scores exactly the response tokens. With ``loss_on="all"`` every real token counts.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..corpora import arc_item, data_dir, jsonl_rows

EVAL_SPLITS = {("arc_easy", "test")}            # what notebook 06 reports: never trained on


@dataclass(frozen=True)
class Example:
    """One supervised pair; the loss falls on ``response`` only."""
    prompt: str
    response: str


def arc_examples(split: str = "validation", root=None, limit: int | None = None,
                 choices: bool = False) -> list[Example]:
    """ARC-Easy items of ``split`` from ``root`` (default ``MKV_DATA_DIR``) as lm-eval formats them: the gold
    answer, or with ``choices`` one example per answer choice (``limit`` counts items either way)."""
    check_training_split("arc_easy", split)
    root = Path(root) if root is not None else data_dir()
    path = None if root is None else root / "arc_easy" / f"{split}.jsonl"
    if path is None or not path.is_file():
        raise FileNotFoundError(f"ARC-Easy {split} split not found (looked for {path}): set MKV_DATA_DIR to a "
                                "folder holding arc_easy/validation.jsonl, or pass an instruction file")
    out = []
    for line in path.read_text().splitlines()[:limit]:
        doc = json.loads(line)
        prompt, answer = arc_item(doc)
        responses = [" " + text for text in doc["choices"]["text"]] if choices else [answer]
        out.extend(Example(prompt, r) for r in responses)
    return out


def instruction_examples(path, limit: int | None = None) -> list[Example]:
    """Examples from a JSON-lines file whose rows hold ``prompt`` and ``response`` strings."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no instruction file at {path}")
    out = []
    for line_no, row in jsonl_rows(path):
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not isinstance(
                row.get("response"), str):
            raise ValueError(f"{path}:{line_no}: each row needs string fields 'prompt' and 'response'")
        out.append(Example(row["prompt"], row["response"]))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out[:limit]


def lmeval_examples(task: str, split: str = "validation", limit: int | None = None,
                    choices: bool = False) -> list[Example]:
    """Examples from an lm-eval task's own prompt and gold target (local files offline, see mkvlib.lmeval), or
    with ``choices`` one per answer choice of a multiple-choice task."""
    check_training_split(task, split)
    from ..lmeval.evaluate import task_manager
    from ..lmeval.tasks import resolve_task_paths
    from lm_eval.tasks import get_task_dict

    obj = get_task_dict([task], task_manager(resolve_task_paths([task])))[task]
    docs = {"validation": obj.validation_docs, "test": obj.test_docs, "train": obj.training_docs}[split]()
    if docs is None:
        raise ValueError(f"lm-eval task {task!r} has no {split} split here")
    if choices and obj.config.doc_to_choice is None:
        raise ValueError(f"lm-eval task {task!r} is not multiple choice (no doc_to_choice): drop --choices")
    out = []
    for doc in list(docs)[:limit]:
        if choices:
            out.extend(Example(str(obj.doc_to_text(doc)), obj.config.target_delimiter + str(c))
                       for c in obj.doc_to_choice(doc))
            continue
        target = obj.doc_to_target(doc)
        if isinstance(target, int) and obj.config.doc_to_choice is not None:
            target = obj.doc_to_choice(doc)[target]
        out.append(Example(str(obj.doc_to_text(doc)), obj.config.target_delimiter + str(target)))
    return out


def check_training_split(task: str, split: str) -> None:
    if (task, split) in EVAL_SPLITS:
        raise ValueError(f"{task} {split} is the split that accuracy is reported on: train on another split "
                         "(e.g. validation)")


def load_examples(source: str, split: str = "validation", limit: int | None = None,
                  choices: bool = False) -> list[Example]:
    """``source``: 'arc_easy' (local files), a .jsonl instruction file, or the name of an lm-eval task.

    ``choices``: every answer choice of a multiple-choice source, the continuations its accuracy compares
    (distillation data: an LM loss on them would teach the wrong answers)."""
    if source.endswith(".jsonl") or Path(source).is_file():
        if choices:
            raise ValueError(f"{source} is an instruction file, with one response per prompt and no answer "
                             "choices: drop --choices, or use 'arc_easy' or a multiple-choice lm-eval task")
        return instruction_examples(source, limit)
    if source == "arc_easy":
        return arc_examples(split, limit=limit, choices=choices)
    return lmeval_examples(source, split, limit, choices=choices)


def encode(examples: list[Example], tokenizer, seq_len: int = 256, pack: bool = True,
           loss_on: str = "response") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both LongTensor (N, seq_len), from ``examples`` (see the module docstring for the layout).

    ``loss_on``: "response" (supervised fine-tuning) or "all" (every real token, e.g. for projections).
    An example longer than ``seq_len`` loses the start of its prompt; one whose response alone does not fit
    is an error.
    """
    if loss_on not in ("response", "all"):
        raise ValueError(f"loss_on must be 'response' or 'all', not {loss_on!r}")
    if not examples:
        raise ValueError("no examples to encode")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    pieces = []
    for ex in examples:
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        if len(r) + 1 > seq_len:
            raise ValueError(f"a response of {len(r)} tokens does not fit seq_len {seq_len}: raise --seq-len")
        p = p[-(seq_len - len(r)):] if p else p
        m = [0] * (len(p) - 1) + [1] * (len(r) + 1) if p else [1] * len(r)
        pieces.append((p + r, m if loss_on == "response" else [1] * (len(p) + len(r))))
    rows, row = [], ([], [])
    for ids, m in pieces:
        if row[0] and (not pack or len(row[0]) + len(ids) > seq_len):
            rows.append(row)
            row = ([], [])
        row[0].extend(ids)
        row[1].extend(m)
    rows.append(row)
    ids = torch.full((len(rows), seq_len), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), seq_len), dtype=torch.long)
    for i, (r_ids, r_mask) in enumerate(rows):
        ids[i, :len(r_ids)] = torch.tensor(r_ids)
        mask[i, :len(r_mask)] = torch.tensor(r_mask)
    return ids, mask


def target_count(mask: torch.Tensor) -> int:
    """Next-token targets the loss counts under ``mask`` (input and target both 1)."""
    return int((mask[:, 1:] * mask[:, :-1]).sum())
