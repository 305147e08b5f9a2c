"""One folder holding a fine-tuned adapter and the projections trained with it. Notebook 06.

Layout::

    BUNDLE/adapter/             peft's own files (adapter_config.json, adapter_model.safetensors)
    BUNDLE/projections.safetensors
    BUNDLE/manifest.json        base model, geometry, adapter config + hash, adapter weights hash,
                                projections fingerprint, and how the bundle was made

Loading checks every identity in the manifest against the files and the base model, so an adapter for another
model or geometry, or files swapped between bundles, is a clear error rather than silently wrong numbers.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..core.geometry import KVGeometry
from ..core.io import _umask, write_json
from ..core.projections import Projections
from .adapter import adapter_config_dict, config_hash, merge, peft_wrapping, weights_hash

FORMAT = "mkv-lora-bundle/1"


# The last commit holding the weights of the committed bundles (data/lora/arc_easy_stage{1,2}): they left the tree to
# keep the repository small. Used when git cannot be asked (no git, or a checkout without history).
WEIGHTS_COMMIT = "63fe093"
WEIGHT_FILES = ("adapter/adapter_model.safetensors", "projections.safetensors")


class BundleMismatchError(ValueError):
    """A bundle does not fit the model it is loaded on, or its files do not match its manifest."""


class BundleWeightsMissingError(FileNotFoundError):
    """A bundle's records (manifest, configs) are here but its weights are not: the committed bundles ship without
    them (kept out of the repository to keep it small); the message says how to get them back."""


def missing_weights(folder, manifest: dict | None = None) -> list[str]:
    """The weight files (relative to ``folder``) that ``folder``'s manifest needs and that are not there: the
    adapter's weights, and the projections when the manifest names a fingerprint."""
    folder = Path(folder)
    manifest = read_manifest(folder) if manifest is None else manifest
    needed = [WEIGHT_FILES[0]] + ([WEIGHT_FILES[1]] if manifest.get("projections_fingerprint") else [])
    return [name for name in needed if not (folder / name).is_file()]


def _commit_with(path: Path) -> str | None:
    """The newest commit that added or changed ``path`` (so still holds it), asked of git; None if git cannot say."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent if path.parent.is_dir()
                             else Path(__file__).parent, capture_output=True, text=True, timeout=10)
        if top.returncode != 0:
            return None
        rel = path.resolve().relative_to(Path(top.stdout.strip()).resolve())
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--diff-filter=AM", "--", rel.as_posix()],
                             cwd=top.stdout.strip(), capture_output=True, text=True, timeout=30)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def weights_missing_error(folder, missing: list[str], manifest: dict) -> BundleWeightsMissingError:
    """The error for a bundle without its weights: what is missing, the `git show` lines that restore them from the
    commit that last had them (looked up with git, else :data:`WEIGHTS_COMMIT` for the committed bundles), and
    the command that retrains them."""
    from ..core.env import project_dir

    folder = Path(folder)
    shipped = (project_dir() / "data" / "lora").resolve()
    is_shipped = folder.resolve().parent == shipped
    lines = [f"{folder} has the bundle's records (manifest.json) but not its weights ({', '.join(missing)})."]
    restore = []
    for name in missing:
        path = folder / name
        commit = _commit_with(path) or (WEIGHTS_COMMIT if is_shipped else None)
        if commit:
            rel = f"data/lora/{folder.resolve().name}/{name}" if is_shipped else path.as_posix()
            restore.append(f"  git show {commit}:{rel} > {rel}")
    if is_shipped or restore:
        lines.append("The LoRA weights are not shipped in the repository (kept small); git history keeps them. "
                     "From the repository root:")
        lines += restore
    stage = manifest.get("stage")
    how = manifest.get("command") or (f"mkv sft --stage {stage} ... --out {folder}" if stage else
                                      f"mkv sft --stage 1 ... --out {folder}")
    lines.append(f"Or retrain the bundle (`mkv sft --stage 1 ...`, then `mkv sft --stage 2 --adapter STAGE1 ...`); "
                 f"this one was made with: {how}")
    return BundleWeightsMissingError("\n".join(lines))


def save_bundle(folder, peft_model, projections: Projections | None, **record) -> Path:
    """Write adapter + projections + manifest into ``folder`` (replaced as a whole, atomically). ``record``:
    extra JSON fields for the manifest (command, steps, tokens, wall time...)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        peft_model.save_pretrained(str(tmp / "adapter"))
        (tmp / "adapter" / "README.md").unlink(missing_ok=True)   # peft's empty model-card template
        adapter_cfg = adapter_config_dict(peft_model)
        manifest = {"format": FORMAT, "base_model": getattr(peft_model, "mkv_name", None),
                    "geometry": KVGeometry.of(peft_model).as_dict(), "adapter_config": adapter_cfg,
                    "adapter_config_hash": config_hash(adapter_cfg), "adapter_weights_hash": weights_hash(peft_model),
                    "projections_fingerprint": None, **record}
        if projections is not None:
            projections.check_model(peft_model)
            projections.save(tmp / "projections.safetensors")
            manifest["projections_fingerprint"] = projections.fingerprint()
        write_json(tmp / "manifest.json", manifest)
        os.chmod(tmp, 0o777 & ~_umask())
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_manifest(folder) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an adapter bundle: no manifest.json (make one with "
                                "`mkv sft --stage 1 --out FOLDER`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BundleMismatchError(f"{path} has format {manifest.get('format')!r}; this mkvlib reads {FORMAT!r}")
    return manifest


def check_bundle(manifest: dict, model, where="the bundle") -> None:
    """Raise :class:`BundleMismatchError` unless the bundle was made for ``model`` (name and geometry)."""
    name = getattr(model, "mkv_name", None)
    geom = KVGeometry.of(model).as_dict()
    if manifest.get("geometry") != geom:
        raise BundleMismatchError(f"{where} was made for a model with geometry {manifest.get('geometry')} "
                                  f"({manifest.get('base_model')!r}); this model has {geom} ({name!r}). Load it "
                                  "on the base model it was trained on.")
    if manifest.get("base_model") not in (None, name):
        raise BundleMismatchError(f"{where} was fine-tuned from {manifest.get('base_model')!r}, not {name!r}: "
                                  "load it on that base model")


def load_bundle(folder, model, trainable: bool = False):
    """(peft model, projections or None, manifest) from a bundle folder, on the base ``model``.

    Checks base model and geometry first, then that the weight files are there (:class:`BundleWeightsMissingError`
    if not: the committed bundles ship without them), then that the adapter files and projections match the
    manifest.
    """
    from peft import PeftModel

    folder = Path(folder)
    manifest = read_manifest(folder)
    check_bundle(manifest, model, where=str(folder))
    missing = missing_weights(folder, manifest)
    if missing:
        raise weights_missing_error(folder, missing, manifest)
    name = getattr(model, "mkv_name", None)
    with peft_wrapping():
        peft_model = PeftModel.from_pretrained(model, str(folder / "adapter"), is_trainable=trainable)
    if name is not None:
        model.mkv_name = name
    cfg = adapter_config_dict(peft_model)
    if config_hash(cfg) != manifest["adapter_config_hash"]:
        raise BundleMismatchError(f"{folder}/adapter has config {cfg}, which does not match the manifest's "
                                  f"{manifest['adapter_config']}: the adapter files were replaced")
    if weights_hash(peft_model) != manifest["adapter_weights_hash"]:
        raise BundleMismatchError(f"{folder}/adapter weights do not match the manifest's hash: the adapter files "
                                  "were replaced or corrupted")
    projections = None
    if manifest.get("projections_fingerprint"):
        projections = Projections.load(folder / "projections.safetensors")
        if projections.fingerprint() != manifest["projections_fingerprint"]:
            raise BundleMismatchError(f"{folder}/projections.safetensors has fingerprint "
                                      f"{projections.fingerprint()}, the manifest says "
                                      f"{manifest['projections_fingerprint']}")
        projections.check_model(peft_model)
    return peft_model, projections, manifest


def load_merged(folder, model):
    """(merged model, projections or None, manifest): the bundle's adapter folded into ``model``'s weights
    (``merge_and_unload``). The merged model keeps the base model's name (so projections fitted to the base still
    load) and carries the adapter's weights hash as ``mkv_adapter``, which results record."""
    peft_model, projections, manifest = load_bundle(folder, model)   # checks the weights against this hash
    merged = merge(peft_model)
    merged.mkv_adapter = manifest["adapter_weights_hash"]
    return merged, projections, manifest
