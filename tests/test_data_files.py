"""The shipped data folder: every file findable by its name alone (no two files share one), outside LoRA bundles,
whose members are named by their role in the bundle (manifest.json, adapter/adapter_config.json, ...)."""
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"


def _bundle_of(path: Path, root: Path) -> Path | None:
    """The bundle folder (a folder holding a manifest.json) under ``root`` that ``path`` lies in, if any."""
    for parent in path.parents:
        if parent == root:
            return None
        if (parent / "manifest.json").is_file():
            return parent
    return None


def shared_names(root: Path = DATA) -> dict[str, list[str]]:
    names = defaultdict(list)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        unit = _bundle_of(path, root) or path                  # a bundle counts as one artefact, named by its folder
        names[unit.name].append(unit.relative_to(root).as_posix())
    return {n: sorted(set(ps)) for n, ps in names.items() if len(set(ps)) > 1}


def test_no_two_files_under_data_share_a_name():
    assert shared_names() == {}, "rename one of each group so that a file name says which file it is"


def test_the_check_sees_a_shared_name(tmp_path):
    for rel in ("projections/m.trained.json", "trajectories/m.trained.json", "lora/a/manifest.json",
                "lora/b/manifest.json", "lora/b/adapter/adapter_config.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    assert shared_names(tmp_path) == {"m.trained.json": ["projections/m.trained.json", "trajectories/m.trained.json"]}
