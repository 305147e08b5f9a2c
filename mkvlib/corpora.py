"""Text corpora by name or path, tokenised into fixed-length blocks.

A name is looked up, in order, as: a local file (.txt or .jsonl); a file in the data directory
(``MKV_DATA_DIR``, laid out like the project's shared data folder); a Hugging Face dataset (when online);
and, for ``pydoc``, text that ships with Python itself. Introduced in notebook 01.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch


class CorpusNotFoundError(FileNotFoundError):
    """No source had the corpus; the message lists every place looked in."""


@dataclass(frozen=True)
class CorpusSource:
    """Where one named corpus may come from: a path under the data directory and a Hugging Face dataset."""
    data_path: str | None
    hf: tuple | None = None          # (path, config, split, text field)
    field: str = "text"
    render: str | None = None        # rows rendered by RENDERERS[render] instead of read from ``field``


CORPORA: dict[str, CorpusSource] = {
    "wikitext2-test": CorpusSource("wikitext2/wikitext-2-raw-test.txt",
                                   ("Salesforce/wikitext", "wikitext-2-raw-v1", "test", "text")),
    "wikitext2-validation": CorpusSource("wikitext2/wikitext-2-raw-validation.txt",
                                         ("Salesforce/wikitext", "wikitext-2-raw-v1", "validation", "text")),
    "wikipedia": CorpusSource("calibration/wikipedia_demo/original/wiki_demo.txt"),
    "c4": CorpusSource("calibration/c4_sample/original/c4_sample.jsonl",
                       ("allenai/c4", "en", "validation", "text")),
    "shakespeare": CorpusSource("calibration/tinyshakespeare/original/input.txt"),
    # task text, as lm-eval prompts it with the gold answer: calibration for a model fine-tuned on the task
    "arc_easy-validation": CorpusSource("arc_easy/validation.jsonl", render="arc"),
    "pydoc-train": CorpusSource(None),
    "pydoc-test": CorpusSource(None),
}
ALIASES = {"wikitext2": "wikitext2-test", "wikitext": "wikitext2-test", "wikitext2-val": "wikitext2-validation",
           "pydoc": "pydoc-train", "tinyshakespeare": "shakespeare", "c4_sample": "c4",
           "arc_easy": "arc_easy-validation"}
ARC_PROMPT = "Question: {question}\nAnswer:"   # lm-eval's arc_easy doc_to_text; the target is " " + the choice


def arc_item(doc: dict) -> tuple[str, str]:
    """(prompt, response) of one ARC row ({question, choices: {text, label}, answerKey}) as lm-eval scores it."""
    try:
        answer = doc["choices"]["text"][doc["choices"]["label"].index(doc["answerKey"])]
        return ARC_PROMPT.format(question=doc["question"]), " " + answer
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"not an ARC row (question, choices.text/label, answerKey): {err!r}") from None


RENDERERS = {"arc": lambda row: "".join(arc_item(row))}


def data_dir() -> Path | None:
    """The shared data directory named by ``MKV_DATA_DIR``, or None."""
    value = os.environ.get("MKV_DATA_DIR")
    return Path(value).expanduser() if value else None


def default_corpus(role: str = "calibration") -> str:
    """Wikitext2 (validation to calibrate and train, test to evaluate) when a data directory is set,
    else the Python documentation that ships with Python (disjoint train and test parts)."""
    if role not in ("calibration", "eval"):
        raise ValueError(f"role must be 'calibration' or 'eval', not {role!r}")
    have_data = data_dir() is not None and (data_dir() / "wikitext2").is_dir()
    if have_data:
        return "wikitext2-validation" if role == "calibration" else "wikitext2-test"
    return "pydoc-train" if role == "calibration" else "pydoc-test"


def read_text_file(path: Path, field: str | None = None, render: str | None = None) -> str:
    """Read a .txt file, or a .jsonl file's rows: their text field (``text``, ``page``, ``content`` or the first
    string field), ``prompt`` + ``response`` for instruction rows, or ``RENDERERS[render](row)``; rows are
    joined by blank lines."""
    if path.suffix == ".jsonl":
        docs = []
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no} is not valid JSON ({err})") from None
                if render is not None:
                    docs.append(RENDERERS[render](row))
                    continue
                if field not in row and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
                    docs.append(row["prompt"] + row["response"])
                    continue
                key = field if field in row else next((k for k in ("text", "page", "content") if k in row), None)
                if key is None:
                    key = next((k for k, v in row.items() if isinstance(v, str)), None)
                if key is None:
                    raise ValueError(f"{path}:{line_no} has no text field; expected 'text' or 'page'")
                docs.append(row[key])
        return "\n\n".join(docs)
    return path.read_text(encoding="utf-8", errors="replace")


def pydoc_text(part: str) -> str:
    """Python's own documentation topics: the first 80% of the sorted topics for 'train', the rest for 'test'."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    cut = int(len(keys) * 0.8)
    chosen = keys[:cut] if part == "train" else keys[cut:]
    return "\n\n".join(topics[k] for k in chosen)


def _online_allowed() -> bool:
    return not any(os.environ.get(v, "").lower() in {"1", "true"} for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_text(name: str) -> str:
    """The raw text of a corpus given by name (see :data:`CORPORA`) or path."""
    tried = []
    path = Path(name).expanduser()
    if path.suffix in (".txt", ".jsonl") or path.exists():
        if path.is_file():
            return read_text_file(path)
        tried.append(f"local file {path} (does not exist)")
    key = ALIASES.get(name.lower(), name.lower())
    source = CORPORA.get(key)
    if source is None and not tried:
        raise CorpusNotFoundError(f"unknown corpus {name!r}: give a .txt/.jsonl path or one of "
                                  f"{sorted(CORPORA)} (aliases {sorted(ALIASES)})")
    if source is not None:
        if key.startswith("pydoc-"):
            return pydoc_text(key.split("-", 1)[1])
        if source.data_path:
            root = data_dir()
            if root is None:
                tried.append("data directory: MKV_DATA_DIR is not set")
            else:
                candidate = root / source.data_path
                if candidate.is_file():
                    return read_text_file(candidate, source.field, source.render)
                tried.append(f"data directory: {candidate} (missing)")
        if source.hf:
            if not _online_allowed():
                tried.append(f"Hugging Face dataset {source.hf[0]} (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)")
            else:
                try:
                    import datasets

                    ds = datasets.load_dataset(source.hf[0], source.hf[1], split=source.hf[2])
                    return "".join(ds[source.hf[3]])
                except Exception as err:  # noqa: BLE001 - any failure means "not available here"
                    tried.append(f"Hugging Face dataset {source.hf[0]}/{source.hf[1]} ({type(err).__name__}: "
                                 f"{str(err)[:120]})")
        else:
            tried.append("no Hugging Face source for this corpus")
    raise CorpusNotFoundError(
        f"corpus {name!r} not found. Looked in:\n  - " + "\n  - ".join(tried)
        + "\nSet MKV_DATA_DIR to a folder with the shared data layout, pass a file path, or use 'pydoc' (offline).")


def token_blocks(tokenizer, corpus: str, seq_len: int, n_tokens: int | None = None, skip_tokens: int = 0):
    """Tokenise a corpus into a LongTensor of shape (n_blocks, seq_len), dropping the ragged tail.

    ``n_tokens`` caps the total (rounded down to whole blocks); ``skip_tokens`` starts further in, so two
    calls can take disjoint slices of one corpus.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, not {seq_len}")
    text = load_text(corpus)
    want = None if n_tokens is None else n_tokens + skip_tokens
    if want is not None and len(text) > 8 * want:
        text = text[: 8 * want]  # about 4 characters a token: no need to tokenise a whole book
    ids = tokenizer(text, add_special_tokens=False, return_tensors=None)["input_ids"]
    ids = ids[skip_tokens:]
    if n_tokens is not None:
        ids = ids[:n_tokens]
    n_blocks = len(ids) // seq_len
    if n_blocks == 0:
        raise ValueError(f"corpus {corpus!r} gave {len(ids)} tokens, fewer than one block of {seq_len}")
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)
