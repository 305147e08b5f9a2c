"""Text corpora by name or path, tokenised into fixed-length blocks.

A name is looked up, in order, as: a local file (.txt or .jsonl); a file in the data directory
(``MKV_DATA_DIR``, laid out like the project's shared data folder); a Hugging Face dataset (when online);
and, for ``pydoc``, text that ships with Python itself. Introduced in notebook 01.

The five ``training/*.jsonl`` files of the data directory are corpora by short name (``books``,
``stackexchange``, ``factbook``, ``peps``, ``rfcs``): each name means the file's *training part*, and
``<name>-heldout`` its held-out part (the last 5% of documents, at least one), which only evaluation may read
(:func:`check_not_heldout`). A corpus spec may also be a weighted mixture, ``books:2,stackexchange:1,peps``
(:func:`parse_mixture`, :func:`mixture_blocks`); :func:`token_blocks` takes either.
"""
from __future__ import annotations

import json
import math
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
    part: str | None = None          # "train" or "heldout": that document split of a JSONL file (split_documents)


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
    # text sampled once from the embedded model itself (mkvlib.sampled): training text that needs no data at all
    "sampled": CorpusSource(None),
}
# the data directory's training/ files: NAME is the training part, NAME-heldout the last HELDOUT_FRACTION of documents
TRAINING_FILES = {"books": "training/gutenberg_books.jsonl", "stackexchange": "training/stackexchange_qa.jsonl",
                  "factbook": "training/cia_world_factbook.jsonl", "peps": "training/python_peps_prose.jsonl",
                  "rfcs": "training/rust_rfcs_prose.jsonl"}
HELDOUT_FRACTION = 0.05
for _name, _path in TRAINING_FILES.items():
    CORPORA[_name] = CorpusSource(_path, part="train")
    CORPORA[f"{_name}-heldout"] = CorpusSource(_path, part="heldout")
ALIASES = {"wikitext2": "wikitext2-test", "wikitext": "wikitext2-test", "wikitext2-val": "wikitext2-validation",
           "pydoc": "pydoc-train", "tinyshakespeare": "shakespeare", "c4_sample": "c4",
           "arc_easy": "arc_easy-validation",
           "gutenberg_books": "books", "gutenberg": "books", "stackexchange_qa": "stackexchange",
           "cia_world_factbook": "factbook", "python_peps_prose": "peps", "rust_rfcs_prose": "rfcs"}
ALIASES.update({f"{_name}-train": _name for _name in TRAINING_FILES})
# held out from all training and calibration: the out-of-domain suite's text (mkvlib.suite) and benchmark items
EVALUATION_CORPORA = ("wikitext2-test", "shakespeare", "pydoc-test")
BENCHMARK_DIRS = ("piqa", "arc_easy", "hellaswag", "winogrande", "commonsense_qa", "openbookqa", "gsm8k")
DEFAULT_TRAINING_MIXTURE = "books,stackexchange,factbook,peps,rfcs,c4,wikipedia"
# training without a data folder: the model's own samples (sampled once, cached), so that Python's documentation
# (the suite's pydoc-test) stays a domain that no fallback training or calibration reads
FALLBACK_TRAINING_MIXTURE = "sampled"
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
    """To calibrate and train: :data:`DEFAULT_TRAINING_MIXTURE` when the data directory has ``training/``, else
    wikitext2 validation; to evaluate: wikitext2 test. Without a data directory, :func:`fallback_corpus` (for
    ``role='training'``, text sampled from the model itself mixed with Python's documentation)."""
    if role not in ("calibration", "training", "eval"):
        raise ValueError(f"role must be 'calibration', 'training' or 'eval', not {role!r}")
    root = data_dir()
    if role in ("calibration", "training") and root is not None and (root / "training").is_dir():
        return DEFAULT_TRAINING_MIXTURE
    have_data = root is not None and (root / "wikitext2").is_dir()
    if have_data:
        return "wikitext2-validation" if role == "calibration" else "wikitext2-test"
    from .runtime import note_once   # announced once per process: these numbers are not the README's
    why = "no data folder (MKV_DATA_DIR unset)" if root is None else f"no wikitext2/ in {root}"
    note_once("corpus-fallback", f"mkvlib: {why}: using Python's documentation text ({fallback_corpus('calibration')!r}"
              f" to calibrate, {fallback_corpus('eval')!r} to evaluate) and the model's own samples to train; numbers "
              "are not comparable with the README's (set MKV_DATA_DIR=/path/to/data for real text)")
    return fallback_corpus(role)


def fallback_corpus(role: str) -> str:
    """The corpus for ``role`` on a machine without a data directory: Python's own documentation (disjoint
    train and test parts). The one place a data-free source (e.g. text sampled from the model) plugs in."""
    if role == "training":
        return FALLBACK_TRAINING_MIXTURE
    return "pydoc-train" if role == "calibration" else "pydoc-test"


def read_text_file(path: Path, field: str | None = None, render: str | None = None) -> str:
    """Read a .txt file, or a .jsonl file's rows: their text field (``text``, ``page``, ``content`` or the first
    string field), ``prompt`` + ``response`` for instruction rows, or ``RENDERERS[render](row)``; rows are
    joined by blank lines."""
    if path.suffix == ".jsonl":
        return "\n\n".join(read_documents(path, field, render))
    return path.read_text(encoding="utf-8", errors="replace")


_DOCUMENTS: dict = {}   # (path, size, mtime, field, render) -> documents: each JSONL file parsed once per process


def read_documents(path: Path, field: str | None = None, render: str | None = None) -> tuple[str, ...]:
    """The documents (one per row, in file order) of a .jsonl file, as :func:`read_text_file` reads them;
    parsed once per process (cached by path, size and modification time)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, field, render)
    if key not in _DOCUMENTS:
        for old in [k for k in _DOCUMENTS if k[0] == key[0]]:   # a changed file: forget its old version
            del _DOCUMENTS[old]
        _DOCUMENTS[key] = _parse_jsonl(path, field, render)
    return _DOCUMENTS[key]


def split_documents(docs, part: str, fraction: float = HELDOUT_FRACTION) -> list[str]:
    """The ``part`` of ``docs``: 'heldout' is the last ``fraction`` of documents (at least one), 'train' the rest."""
    if part not in ("train", "heldout"):
        raise ValueError(f"part must be 'train' or 'heldout', not {part!r}")
    if len(docs) < 2:
        raise ValueError(f"{len(docs)} document(s) cannot be split into a training and a held-out part (need 2+)")
    n_held = max(1, int(len(docs) * fraction))
    return list(docs[:-n_held]) if part == "train" else list(docs[-n_held:])


def _parse_jsonl(path: Path, field: str | None, render: str | None) -> tuple[str, ...]:
    """The rows of a .jsonl file as documents (see :func:`read_text_file`)."""
    docs = []
    for line_no, row in jsonl_rows(path):
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
    return tuple(docs)


def jsonl_rows(path: Path):
    """(line number from 1, parsed row) for each non-blank line of a JSON-lines file, in file order; a line that
    is not valid JSON raises ValueError naming the file and line."""
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no} is not valid JSON ({err})") from None


def pydoc_text(part: str) -> str:
    """Python's own documentation topics: the first 80% of the sorted topics for 'train', the rest for 'test'."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    cut = int(len(keys) * 0.8)
    chosen = keys[:cut] if part == "train" else keys[cut:]
    return "\n\n".join(topics[k] for k in chosen)


def _from_data_dir(source: CorpusSource, tried: list) -> str | None:
    """The text of ``source`` from the data directory, or None (saying where it looked in ``tried``)."""
    root = data_dir()
    if root is None:
        tried.append("data directory: MKV_DATA_DIR is not set")
        return None
    candidate = root / source.data_path
    if candidate.is_file() and source.part:
        return "\n\n".join(split_documents(read_documents(candidate, source.field, source.render), source.part))
    if candidate.is_file():
        return read_text_file(candidate, source.field, source.render)
    tried.append(f"data directory: {candidate} (missing)")
    return None


def _from_hub(source: CorpusSource, tried: list) -> str | None:
    """The text of ``source`` from its Hugging Face dataset, or None (saying why in ``tried``)."""
    from .runtime import hub_offline

    if hub_offline():
        tried.append(f"Hugging Face dataset {source.hf[0]} (offline: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)")
        return None
    try:
        import datasets

        ds = datasets.load_dataset(source.hf[0], source.hf[1], split=source.hf[2])
        return "".join(ds[source.hf[3]])
    except Exception as err:  # noqa: BLE001 - any failure means "not available here"
        tried.append(f"Hugging Face dataset {source.hf[0]}/{source.hf[1]} ({type(err).__name__}: "
                     f"{str(err)[:120]})")
        return None


def load_text(name: str) -> str:
    """The raw text of a corpus given by name (see :data:`CORPORA`) or path; of a mixture spec, the texts of its
    parts joined by blank lines (weights play no part here: see :func:`mixture_blocks`)."""
    if is_mixture(name):
        return "\n\n".join(load_text(part) for part, _ in parse_mixture(name))
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
        if key == "sampled":
            from .sampled import embedded_sampled_text

            return embedded_sampled_text()
        text = _from_data_dir(source, tried) if source.data_path else None
        if text is None and source.hf:
            text = _from_hub(source, tried)
        elif text is None and not source.part:
            tried.append("no Hugging Face source for this corpus")
        if text is not None:
            return text
    raise CorpusNotFoundError(
        f"corpus {name!r} not found. Looked in:\n  - " + "\n  - ".join(tried)
        + "\nSet MKV_DATA_DIR to a folder with the shared data layout, pass a file path, or use 'pydoc' (offline).")


def token_blocks(tokenizer, corpus: str, seq_len: int, n_tokens: int | None = None, skip_tokens: int = 0,
                 seed: int = 0):
    """Tokenise a corpus into a LongTensor of shape (n_blocks, seq_len), dropping the ragged tail.

    ``n_tokens`` caps the total (rounded down to whole blocks); ``skip_tokens`` starts further in, so two
    calls can take disjoint slices of one corpus. A mixture spec (``books:2,peps``) goes to
    :func:`mixture_blocks` (``n_tokens`` required; ``seed`` orders its shuffled blocks).
    """
    if is_mixture(corpus):
        if n_tokens is None:
            raise ValueError(f"the mixture {corpus!r} needs a token count (n_tokens / --tokens) to share out")
        return mixture_blocks(tokenizer, corpus, seq_len, n_tokens, seed=seed, skip_tokens=skip_tokens)
    return _corpus_blocks(tokenizer, corpus, seq_len, n_tokens, skip_tokens)


def _corpus_blocks(tokenizer, corpus: str, seq_len: int, n_tokens: int | None, skip_tokens: int,
                   allow_short: bool = False) -> torch.Tensor:
    """(n_blocks, seq_len) blocks of one corpus; with ``allow_short`` too few tokens give (0, seq_len)."""
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
    bos = opening_token(tokenizer)
    width = seq_len - (bos is not None)         # room for the opening token the model always saw in training
    n_blocks = len(ids) // width
    if bos is not None and n_tokens is not None:
        n_blocks = min(n_blocks, n_tokens // seq_len)    # n_tokens counts the opening tokens too
    if n_blocks == 0 and not allow_short:
        raise ValueError(f"corpus {corpus!r} gave {len(ids)} tokens, fewer than one block of {seq_len}")
    blocks = torch.tensor(ids[: n_blocks * width], dtype=torch.long).view(n_blocks, width)
    return blocks if bos is None else torch.cat([torch.full((n_blocks, 1), bos, dtype=torch.long), blocks], dim=1)


def opening_token(tokenizer) -> int | None:
    """The BOS id when the tokenizer opens every text with it (Gemma's does: without it the model runs far out of
    its regime, perplexity several times higher), else None (SmolLM2's tokenizer adds none: blocks are plain text)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    try:
        opened = tokenizer("a", return_tensors=None)["input_ids"]
    except (TypeError, KeyError):
        return None
    return bos if opened and opened[0] == bos else None


# --- mixtures ------------------------------------------------------------------------------------------------

def is_mixture(spec) -> bool:
    """True for a mixture spec: a string with ',' or ':' that is not an existing file."""
    return isinstance(spec, str) and ("," in spec or ":" in spec) and not Path(spec).expanduser().is_file()


def canonical_name(name: str) -> str:
    """A known corpus name with its alias resolved (lower case), or ``name`` unchanged (a path)."""
    key = ALIASES.get(name.lower(), name.lower())
    return key if key in CORPORA else name


def known_corpora() -> str:
    """The names a spec may use, for error messages."""
    return f"{sorted(CORPORA)} (aliases {sorted(ALIASES)}) or a .txt/.jsonl path"


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """``'books:2,stackexchange:1,peps'`` -> [('books', 2.0), ('stackexchange', 1.0), ('peps', 1.0)].

    Each entry is NAME or NAME:WEIGHT (default weight 1); names are canonical (aliases resolved) or existing
    .txt/.jsonl paths. Raises ValueError for an empty mixture or entry, a weight that does not parse or is not
    a finite number > 0, or a name given twice; :class:`CorpusNotFoundError` for an unknown name.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty corpus mixture {spec!r}: give NAME[:WEIGHT],... e.g. 'books:2,stackexchange,peps'")
    parts, seen = [], set()
    for entry in spec.split(","):
        entry = entry.strip()
        if not entry:
            raise ValueError(f"empty entry in the corpus mixture {spec!r}: remove the extra comma")
        name, weight = entry, 1.0
        if ":" in entry and not Path(entry).expanduser().is_file():
            name, text = (x.strip() for x in entry.rsplit(":", 1))
            try:
                weight = float(text)
            except ValueError:
                raise ValueError(f"weight {text!r} of {name!r} in the corpus mixture {spec!r} is not a number: "
                                 "write NAME:WEIGHT, e.g. books:2") from None
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight {text!r} of {name!r} in the corpus mixture {spec!r} must be a finite "
                                 "number > 0 (leave a corpus out instead of giving it weight 0)")
        if not name:
            raise ValueError(f"entry {entry!r} of the corpus mixture {spec!r} has no corpus name")
        key = canonical_name(name)
        if key not in CORPORA and not Path(name).expanduser().is_file():
            where = "" if name == spec.strip() else f" in the mixture {spec!r}"
            raise CorpusNotFoundError(f"unknown corpus {name!r}{where}: use {known_corpora()}")
        if key in seen:
            raise ValueError(f"corpus {key!r} appears twice in the mixture {spec!r}: give it one weight")
        seen.add(key)
        parts.append((key, weight))
    return parts


def apportion(total: int, weights) -> list[int]:
    """Split the integer ``total`` in proportion to ``weights`` (largest remainders; ties go to the earlier)."""
    w_sum = float(sum(weights))
    quotas = [total * w / w_sum for w in weights]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mixture_blocks(tokenizer, spec: str, seq_len: int, n_tokens: int, seed: int = 0,
                   skip_tokens: int = 0) -> torch.Tensor:
    """Blocks (n_blocks, seq_len) of a mixture, n_blocks = n_tokens // seq_len shared out by weight.

    Each corpus gives its share of whole blocks from its start (after its own share of ``skip_tokens``, so
    ``skip_tokens`` = the tokens of an earlier call takes a disjoint slice of every corpus); the blocks are then
    shuffled by a generator seeded with ``seed``. A corpus with too little text gives what it has, with a note.
    Only the text needed is tokenised (about 8 characters per wanted token).
    """
    parts = parse_mixture(spec)
    n_blocks = n_tokens // seq_len
    if n_blocks < 1:
        raise ValueError(f"{n_tokens} tokens are fewer than one block of {seq_len} for the mixture {spec!r}")
    weights = [w for _, w in parts]
    counts = apportion(n_blocks, weights)
    skips = [k * seq_len for k in apportion(skip_tokens // seq_len, weights)]
    skips[0] += skip_tokens % seq_len
    pieces = []
    for (name, _), count, skip in zip(parts, counts, skips):
        if count == 0:
            continue
        blocks = _corpus_blocks(tokenizer, name, seq_len, count * seq_len, skip, allow_short=True)
        if len(blocks) < count:
            from .runtime import note
            note(f"note: corpus {name!r} had {len(blocks)} of the {count} blocks of {seq_len} tokens its weight "
                 f"asks for in {spec!r}")
        pieces.append(blocks)
    blocks = torch.cat(pieces)
    if len(blocks) == 0:
        raise ValueError(f"the mixture {spec!r} gave no block of {seq_len} tokens")
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    return blocks[order]


# --- held-out text ------------------------------------------------------------------------------------------

class HeldOutCorpusError(ValueError):
    """A held-out (evaluation) corpus was asked for as training or calibration text."""


def heldout_corpora() -> list[str]:
    """Every corpus name that training and calibration must never read: the ``*-heldout`` parts and
    :data:`EVALUATION_CORPORA` (the out-of-domain suite, :mod:`mkvlib.suite`)."""
    return sorted(k for k in CORPORA if k.endswith("-heldout")) + list(EVALUATION_CORPORA)


def _heldout_reason(name: str) -> str | None:
    key = canonical_name(name)
    if key in CORPORA:
        return "is an evaluation set (held out from training and calibration)" if key in heldout_corpora() else None
    parts = [p.lower() for p in Path(name).expanduser().parts]
    if any(b in parts for b in BENCHMARK_DIRS):
        return "looks like benchmark items (train on text corpora only)"
    for corpus, source in CORPORA.items():
        if not source.data_path or not (corpus in heldout_corpora() or source.part == "train"):
            continue
        tail = [p.lower() for p in Path(source.data_path).parts]
        if parts[-len(tail):] == tail:
            if source.part:
                return (f"is the whole file behind {corpus!r}, held-out part included: use the name "
                        f"{corpus!r} for its training part")
            return f"is the file of the evaluation corpus {corpus!r}"
    return None


def check_not_heldout(spec: str, role: str = "training") -> str:
    """Return ``spec`` (a name, path or mixture) unless some part of it is held out from training and
    calibration: a ``*-heldout`` part, an evaluation corpus (:data:`EVALUATION_CORPORA`), a benchmark file,
    or a whole ``training/`` file (which holds a held-out part). Raises :class:`HeldOutCorpusError`."""
    names = [name for name, _ in parse_mixture(spec)] if is_mixture(spec) else [spec]
    for name in names:
        reason = _heldout_reason(name)
        if reason:
            raise HeldOutCorpusError(
                f"{name!r} {reason}. It may not be used as {role} text (held out: {', '.join(heldout_corpora())}); "
                f"use training text such as {DEFAULT_TRAINING_MIXTURE!r} (each name there is a training part)")
    return spec
