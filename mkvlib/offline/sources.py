"""What a bundle carries besides wheels: the data-folder texts a run reads and the model's files."""
from __future__ import annotations

from pathlib import Path

from .base import DEFAULT_TEXTS, BundleError, log


def run_texts() -> list[str]:
    """Data-folder files (relative paths) the project's named corpora and local lm-eval tasks read."""
    from ..corpora import CORPORA
    from ..lmeval.tasks import LOCAL_TASKS

    paths = {s.data_path for s in CORPORA.values() if s.data_path}
    for task in LOCAL_TASKS.values():
        paths.update(task.files.values())
    return sorted(paths)


def text_files(spec: str, data_dir: Path | None) -> list[tuple[str, Path]]:
    """(relative path, file) of the texts to bring: ``run`` (default: what the run reads, missing ones
    skipped), ``none``, or comma-separated paths relative to the data folder (files or folders; must exist)."""
    spec = (spec or "").strip()
    if spec in ("", "none"):
        return []
    if data_dir is None:
        raise BundleError("texts come from the data folder: set MKV_DATA_DIR (or pass --texts none)")
    if not data_dir.is_dir():
        raise BundleError(f"MKV_DATA_DIR={data_dir} is not a folder")
    out: dict[str, Path] = {}
    if spec == DEFAULT_TEXTS:
        for rel in run_texts():
            if (data_dir / rel).is_file():
                out[rel] = data_dir / rel
            else:
                log(f"  note: {rel} is not in {data_dir}; left out")
        return sorted(out.items())
    for rel in (r.strip() for r in spec.split(",")):
        if not rel:
            continue
        path = data_dir / rel
        if path.is_dir():
            out.update({p.relative_to(data_dir).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()})
        elif path.is_file():
            out[Path(rel).as_posix()] = path
        else:
            raise BundleError(f"--texts: {rel} is not in the data folder {data_dir}")
    return sorted(out.items())


def model_files(spec: str | None) -> tuple[list[tuple[str, Path]], dict | None]:
    """([(path in the bundle, file)], model record) for --model: the embedded model's GGUF (default), a .gguf
    file, a local model folder, a Hugging Face id already in the local cache, or ``none``."""
    from .. import models

    if spec and spec.lower() == "none":
        return [], None
    if spec is None or spec.lower() in models.EMBEDDED_ALIASES:
        gguf = models.embedded_gguf()
        return [(f"model/{gguf.name}", gguf)], {"path": f"model/{gguf.name}", "name": models.EMBEDDED,
                                                "embedded": True}
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise BundleError(f"--model {spec}: a file must be a .gguf model")
        return [(f"model/{path.name}", path)], {"path": f"model/{path.name}", "name": path.stem,
                                                "embedded": models.gguf_name(path) == models.EMBEDDED}
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec, local_files_only=True))
        except Exception as err:  # noqa: BLE001 - any failure means: not in the local cache
            raise BundleError(f"--model {spec}: not a .gguf file, a folder, or a Hugging Face id in the local "
                              f"cache ({type(err).__name__})") from err
    name = path.resolve().name if path.resolve().parent.name != "snapshots" else spec.replace("/", "--")
    files = [(f"model/{name}/{p.relative_to(path).as_posix()}", p.resolve()) for p in sorted(path.rglob("*"))
             if p.is_file() and ".git" not in p.relative_to(path).parts]
    return files, {"path": f"model/{name}", "name": name, "embedded": False}
