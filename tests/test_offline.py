"""The offline bundle (mkvlib.offline) and --model .gguf files: chunking, hashes, groups, the target's packages,
the wheel step with an injected resolver and downloader, and unpacking; no network, no real model."""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mkvlib import models
from mkvlib.offline.base import MIB, BundleError, Unresolvable, canonical, never_download
from mkvlib.offline.cli import main
from mkvlib.offline.pack import check_out_dir, pack
from mkvlib.offline.pieces import assign_groups, chunk_ranges, join_file
from mkvlib.offline.resolve import stub_versions, stub_wheel, stubbed_with_extras, unresolvable_requirements
from mkvlib.offline.target import Target, expand_platforms, parse_freeze, parse_names, project_requirements
from mkvlib.offline.unpack import _unzip_wheel, read_manifest, unpack
from mkvlib.offline.wheels import fetch_wheels, plan_wheels

ROOT = Path(__file__).resolve().parent.parent


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    import random

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def tiny_wheel(folder: Path, name: str = "tinypkg", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", f"{name}/__init__.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MKV_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def sources(tmp_path, cache):
    """A fake 3.3 MiB GGUF model, a data folder with a compressible and a small text, and a wheel."""
    gguf = random_file(tmp_path / "src" / "tiny-model.gguf", int(3.3 * MIB), seed=1)
    data = tmp_path / "data"
    (data / "training").mkdir(parents=True)
    (data / "training" / "books.jsonl").write_text("".join(json.dumps({"text": f"line {i} " * 20}) + "\n"
                                                           for i in range(20000)))
    (data / "piqa").mkdir()
    (data / "piqa" / "validation.jsonl").write_text('{"goal": "x"}\n')
    wheel = tiny_wheel(tmp_path / "wheels")
    return {"gguf": gguf, "data": data, "wheel": wheel}


def fake_fetch(wheels):
    def fetch(requirements, target, dest, workdir):
        return list(wheels), {"requirements": requirements, "wheels": [w.name for w in wheels],
                              "built_from_source": []}
    return fetch


def make_bundle(tmp_path, sources, **kw):
    out = tmp_path / "bundle"
    kw = {"chunk_mb": 1.0, "group_mb": 1.5, "requirements": ["tinypkg"], "model": str(sources["gguf"]),
          "texts": "training/books.jsonl,piqa", "data_dir": sources["data"], "fetch": fake_fetch([sources["wheel"]]),
          **kw}
    return out, pack(out, **kw)


def no_install(wheels, site, stamp):
    return f"{len(wheels)} wheels (not installed in this test)"


# --- chunks, hashes, groups ---------------------------------------------------------------------------------

def test_chunk_ranges_cover_the_file():
    assert chunk_ranges(10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert chunk_ranges(4, 4) == [(0, 4)]
    assert chunk_ranges(0, 4) == [(0, 0)]
    with pytest.raises(ValueError):
        chunk_ranges(10, 0)


def test_groups_respect_capacity_and_refuse_an_oversized_piece():
    sizes = {f"p{i}": s for i, s in enumerate([7, 5, 4, 3, 3, 2, 1, 1])}
    groups = assign_groups(sizes, 8)
    totals = {}
    for name, g in groups.items():
        totals[g] = totals.get(g, 0) + sizes[name]
    assert max(totals.values()) <= 8 and len(totals) == 4       # 26 bytes in groups of 8: four
    assert assign_groups(sizes, 8) == groups             # deterministic
    with pytest.raises(BundleError, match="larger than a group"):
        assign_groups({"big": 9}, 8)


def test_pack_unpack_round_trips_bytes_exactly(tmp_path, sources):
    out, manifest = make_bundle(tmp_path, sources)
    gguf = next(f for f in manifest["files"] if f["kind"] == "model")
    assert len(gguf["pieces"]) == 4                              # 3.3 MiB in 1 MiB chunks
    text = next(f for f in manifest["files"] if f["path"] == "data/training/books.jsonl")
    assert text["encoding"] == "xz" and text["stored_size"] < text["size"] / 5
    assert {f["path"] for f in manifest["files"]} == {
        "model/tiny-model.gguf", "wheels/tinypkg-0.1-py3-none-any.whl", "data/training/books.jsonl",
        "data/piqa/validation.jsonl"}
    # every group folder, manifest copy included, stays within --group-mb, and the manifest says so exactly
    for g in manifest["groups"]:
        on_disk = sum(p.stat().st_size for p in (out / g["name"]).rglob("*") if p.is_file())
        assert on_disk == g["bytes"] <= 1.5 * MIB
        assert json.loads((out / g["name"] / "manifest.json").read_text())["bundle_id"] == manifest["bundle_id"]
    result = unpack(out, into=tmp_path / "target", install=no_install)
    target = tmp_path / "target"
    assert (target / "model" / "tiny-model.gguf").read_bytes() == sources["gguf"].read_bytes()
    assert (target / "data" / "training" / "books.jsonl").read_bytes() == \
        (sources["data"] / "training" / "books.jsonl").read_bytes()
    assert (target / "wheels" / sources["wheel"].name).read_bytes() == sources["wheel"].read_bytes()
    assert result["env"]["MKV_DATA_DIR"] == str((target / "data").resolve())
    assert result["model"] == str((target / "model" / "tiny-model.gguf").resolve())
    assert "MKV_EMBEDDED_GGUF" not in result["env"]
    assert "export MKV_DATA_DIR=" in (target / "env.sh").read_text()
    again = unpack(out, into=tmp_path / "target", install=no_install)     # idempotent
    assert again["joined"] == 0 and again["already_there"] == 4


def test_pack_refuses_a_chunk_that_leaves_no_room_for_the_manifest(tmp_path, sources):
    with pytest.raises(BundleError, match="no room"):
        make_bundle(tmp_path, sources, chunk_mb=1.5, group_mb=1.5)


def leftovers(folder: Path) -> list:
    return [p for p in folder.rglob("*")] if folder.exists() else []


def test_corrupt_chunk_is_named_and_nothing_is_written(tmp_path, sources):
    out, manifest = make_bundle(tmp_path, sources)
    piece = next(f for f in manifest["files"] if f["kind"] == "model")["pieces"][2]
    path = out / piece["file"]
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"corrupt piece {piece['file']} \(group {piece['group']} of"):
        unpack(out, into=tmp_path / "target", install=no_install)
    assert leftovers(tmp_path / "target") == []
    assert main(["unpack", str(out), "--into", str(tmp_path / "target")]) == 2


def test_missing_chunk_is_named_with_its_group_and_nothing_is_written(tmp_path, sources, capsys):
    out, manifest = make_bundle(tmp_path, sources)
    piece = next(f for f in manifest["files"] if f["kind"] == "model")["pieces"][-1]
    (out / piece["file"]).unlink()
    with pytest.raises(BundleError, match=rf"missing piece {piece['file']} \(group {piece['group']} of") as err:
        unpack(out, into=tmp_path / "target", install=no_install)
    assert "nothing was written" in str(err.value) and f"bring group(s) g{piece['group']:02d} " in str(err.value)
    assert leftovers(tmp_path / "target") == []
    with pytest.raises(BundleError, match="missing piece"):
        unpack(out, check_only=True)


def test_join_checks_each_piece_and_leaves_no_half_file(tmp_path, sources):
    """Even if a piece changes after the check, the join fails without leaving a partial or temporary file."""
    out, manifest = make_bundle(tmp_path, sources)
    entry = next(f for f in manifest["files"] if f["kind"] == "model")
    last = out / entry["pieces"][-1]["file"]
    last.write_bytes(last.read_bytes()[:-1] + b"\0")
    dest = tmp_path / "joined" / "model.gguf"
    with pytest.raises(BundleError, match="corrupt piece"):
        join_file(out, entry, dest)
    assert leftovers(dest.parent) == []


def test_a_transfer_group_alone_carries_the_manifest(tmp_path, sources):
    """Groups travel separately: a folder holding only gNN/ folders (no top manifest) unpacks."""
    out, manifest = make_bundle(tmp_path, sources)
    (out / "manifest.json").unlink()
    assert read_manifest(out)["bundle_id"] == manifest["bundle_id"]
    assert unpack(out, check_only=True)["checked_pieces"] == sum(g["pieces"] for g in manifest["groups"])


def test_unpack_installs_wheels_offline_into_a_folder(tmp_path, sources):
    out, _ = make_bundle(tmp_path, sources, texts="none", model="none")
    result = unpack(out, into=tmp_path / "target")
    site = tmp_path / "target" / "site"
    assert (site / "tinypkg" / "__init__.py").is_file() and "installed 1 wheels" in result["wheels"]
    assert result["env"]["PYTHONPATH"].startswith(str(site.resolve()))
    probe = subprocess.run([sys.executable, "-c", "import tinypkg; print(tinypkg.VALUE)"], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(site)})
    assert probe.stdout.strip() == "42"
    assert "already installed" in unpack(out, into=tmp_path / "target")["wheels"]


def test_wheels_unzip_without_pip(tmp_path, sources):
    _unzip_wheel(sources["wheel"], tmp_path / "site")
    assert (tmp_path / "site" / "tinypkg" / "__init__.py").read_text() == "VALUE = 42\n"


def test_unpack_runs_as_a_module_without_torch(tmp_path, sources):
    out, _ = make_bundle(tmp_path, sources)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    code = ("import sys; from mkvlib.offline.cli import main; rc = main(['unpack', sys.argv[1], '--check']); "
            "assert 'torch' not in sys.modules, 'unpack must not need torch'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "pieces present and intact" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "mkvlib.offline", "unpack", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2 and "holds no manifest.json" in proc.stderr


def test_out_dir_inside_the_repository_must_be_ignored(tmp_path):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    with pytest.raises(BundleError, match="not git-ignored"):
        check_out_dir(ROOT / "mkvlib" / "bundle-here")
    check_out_dir(ROOT / "build" / "bundle-here")        # build/ is ignored
    check_out_dir(tmp_path / "elsewhere")                 # outside: fine


# --- the target's packages and the wheel step ------------------------------------------------------------------

FREEZE = """\
# pip freeze of the target
Torch==2.11.0+cu128
NumPy==2.3.1
huggingface_hub==1.2.0
PyYAML==6.0.2
-e git+https://example.org/x.git#egg=editable_thing
some.Package @ file:///tmp/some_package-1.0-py3-none-any.whl
nvidia-cublas-cu12==12.8.4.1
"""


def test_freeze_parsing_ignores_case_and_separators():
    has = parse_freeze(FREEZE)
    assert has == {"torch": "2.11.0+cu128", "numpy": "2.3.1", "huggingface-hub": "1.2.0", "pyyaml": "6.0.2",
                   "some-package": None, "nvidia-cublas-cu12": "12.8.4.1"}
    assert parse_names("Transformers, huggingface_hub,PEFT") == {
        "transformers": None, "huggingface-hub": None, "peft": None}
    target = Target(has=has, complete=True)
    assert target.constraints() == ["huggingface-hub==1.2.0", "numpy==2.3.1", "pyyaml==6.0.2"]


def item(name, version="1.0", requires=(), url=None):
    url = url or f"https://files.example.org/{name.replace('-', '_')}-{version}-py3-none-any.whl"
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)},
            "download_info": {"url": url, "archive_info": {"hashes": {}}}}


REPORT = [
    item("lm_eval", "0.4.13", ["torch>=1.8", "numpy", "evaluate", "sqlitedict", "Transformers[torch]>=4.1",
                               "pytest; extra == 'dev'"]),
    item("evaluate", "0.4.5", ["datasets>=2", "numpy"]),
    item("datasets", "5.2.0", ["numpy", "pyarrow>=15", "huggingface-hub>=0.25", "dill",
                               "typing_extensions; python_version < '3.12'"]),
    item("Torch", "2.11.0", ["sympy", "nvidia-cublas-cu12; platform_system == 'Linux'"]),
    item("sympy", "1.13", ["mpmath"]), item("mpmath", "1.3"), item("nvidia-cublas-cu12", "12.8"),
    item("transformers", "5.17.0", ["huggingface-hub", "tokenizers", "numpy", "accelerate; extra == 'torch'"]),
    item("tokenizers", "0.22"), item("accelerate", "1.10", ["torch", "numpy"]),
    item("numpy", "2.3.1"), item("pyarrow", "21.0"), item("huggingface_hub", "1.2.0"), item("dill", "0.4"),
    item("sqlitedict", "2.1"), item("typing-extensions", "4.15"), item("pytest", "8.0"),
]


def names(plan):
    return sorted(canonical(i["metadata"]["name"]) for i in plan.download)


def test_plan_drops_what_a_freeze_lists():
    target = Target(has=parse_freeze(FREEZE + "transformers==5.17.0\naccelerate==1.10\n"), complete=True)
    plan = plan_wheels(REPORT, ["lm-eval>=0.4.8", "datasets>=3.0"], target)
    assert names(plan) == ["datasets", "dill", "evaluate", "lm-eval", "pyarrow", "sqlitedict"]
    assert {"torch", "sympy", "mpmath", "nvidia-cublas-cu12", "tokenizers"} <= set(plan.provided)
    assert "typing-extensions" in plan.unneeded and "pytest" in plan.unneeded    # 3.12 markers, unrequested extra
    assert not plan.warnings


def test_plan_with_names_counts_their_dependencies_as_present_but_not_extras():
    target = Target(has=parse_names("torch,Transformers"))
    plan = plan_wheels(REPORT, ["lm-eval"], target)
    # tokenizers, numpy, huggingface-hub come with transformers; accelerate only with its [torch] extra, which
    # lm-eval asks for, so it travels (and numpy, already present, does not)
    assert names(plan) == ["accelerate", "datasets", "dill", "evaluate", "lm-eval", "pyarrow", "sqlitedict"]


def test_torch_triton_and_nvidia_never_travel_even_if_missing():
    plan = plan_wheels(REPORT, ["lm-eval"], Target(has={}))
    assert not {"torch", "nvidia-cublas-cu12", "sympy", "mpmath"} & set(names(plan))
    assert never_download("NVIDIA_cudnn-cu12") and never_download("triton")


def test_fetch_wheels_builds_source_only_packages_and_downloads_the_rest(tmp_path):
    calls = {"resolve": [], "build": [], "download": []}
    built_url = (tmp_path / "work" / "built" / "sqlitedict-2.1-py3-none-any.whl").as_uri()

    def resolve(requirements, target, find_links, workdir):
        calls["resolve"].append((list(requirements), list(find_links)))
        if not find_links:
            raise Unresolvable(["sqlitedict"], "no wheel")
        return [i if i["metadata"]["name"] != "sqlitedict" else item("sqlitedict", "2.1", url=built_url)
                for i in REPORT]

    def build(requirement, dest):
        calls["build"].append(requirement)
        return tiny_wheel(dest, "sqlitedict", "2.1")

    def download(items, dest, target):
        calls["download"].append(sorted(i["metadata"]["name"] for i in items))
        dest.mkdir(parents=True, exist_ok=True)
        return {canonical(i["metadata"]["name"]): tiny_wheel(dest, i["metadata"]["name"].replace("-", "_"),
                                                                    i["metadata"]["version"]) for i in items}

    target = Target(has=parse_names("torch,transformers"))
    wheels, summary = fetch_wheels(["lm-eval", "datasets"], target, tmp_path / "wheels", tmp_path / "work",
                                           resolve=resolve, download=download, build=build)
    assert calls["build"] == ["sqlitedict"] and len(calls["resolve"]) == 2
    assert "transformers" in calls["resolve"][0][0]              # names-only: their closure is resolved too
    assert summary["built_from_source"] == ["sqlitedict"]
    assert sorted(w.name.split("-")[0] for w in wheels) == ["accelerate", "datasets", "dill", "evaluate", "lm_eval",
                                                             "pyarrow", "sqlitedict"]
    assert all(w.is_file() for w in wheels)


PIP_CONFLICT = """\
ERROR: Cannot install lm-eval==0.4.12 and lm-eval==0.4.13 because these package versions have conflicting dependencies.

The conflict is caused by:
    lm-eval 0.4.13 depends on sqlitedict
    lm-eval 0.4.12 depends on sqlitedict

Additionally, some packages in these conflicts have no matching distributions available for your environment:
    sqlitedict
    word2number

To fix this you could try to:
"""


def test_source_only_packages_are_read_from_pips_errors():
    assert unresolvable_requirements(PIP_CONFLICT) == ["sqlitedict", "word2number"]
    assert unresolvable_requirements(
        "ERROR: Could not find a version that satisfies the requirement rouge-score>=0.0.4 (from lm-eval) "
        "(from versions: none)") == ["rouge-score>=0.0.4"]
    assert unresolvable_requirements("ERROR: Cannot install a and b: conflicting dependencies.") == []


def test_a_full_freeze_resolves_against_stubs_at_its_exact_versions(tmp_path):
    stubs = stub_versions(Target(has=parse_freeze(FREEZE), complete=True))
    assert stubs["torch"] == "2.11.0+mkvstub" and "some-package" not in stubs
    assert stub_versions(Target(has=parse_names("torch"))) == {}
    wheel = stub_wheel(tmp_path, "torch", stubs["torch"])
    with zipfile.ZipFile(wheel) as zf:
        assert not [n for n in zf.namelist() if not n.startswith("torch-2.11.0+mkvstub.dist-info/")]


def test_stubbed_packages_required_with_extras_are_resolved_for_real():
    items = [item("datasets", "5.2.0", ["fsspec[http]<=2026.9.0", "numpy"]), item("fsspec", "2026.9.0+mkvstub"),
             item("numpy", "2.3.1+mkvstub")]
    assert stubbed_with_extras(items, {"fsspec", "numpy"}) == {"fsspec"}


def test_platforms_expand_to_older_glibc():
    tags = expand_platforms(["manylinux_2_28_x86_64", "manylinux2014_x86_64"])
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags
    assert tags.count("manylinux2014_x86_64") == 1 and "manylinux_2_16_x86_64" not in tags
    args = Target(python_version="3.12").pip_args()
    assert args[:7] == ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]


def test_project_requirements_are_pyprojects():
    reqs = project_requirements()
    assert any(r.startswith("lm-eval") for r in reqs) and any(r.startswith("gguf") for r in reqs)


# --- --model FILE.gguf ---------------------------------------------------------------------------------------

def test_gguf_path_converts_once_and_reuses_the_cache(tmp_path, cache, monkeypatch):
    calls = []

    def fake_convert(gguf, target):
        calls.append(Path(gguf))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"")
        return target

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    gguf = random_file(tmp_path / "My-Model.Q8_0.gguf", 4096)
    path, name = models.resolve_model_path(str(gguf))
    sha = models.file_sha256(gguf)
    assert Path(path) == cache / "models" / f"My-Model.Q8_0-{sha[:12]}" and name == "My-Model.Q8_0"
    assert models.resolve_model_path(str(gguf)) == (path, name)
    assert len(calls) == 1
    random_file(gguf, 4096, seed=2)                               # other bytes: converted anew, elsewhere
    path2, _ = models.resolve_model_path(str(gguf))
    assert path2 != path and len(calls) == 2
    monkeypatch.setattr(models, "EMBEDDED_SHA256", {models.file_sha256(gguf)})
    assert models.resolve_model_path(str(gguf))[1] == models.EMBEDDED   # the embedded model's own file
    with pytest.raises(models.ModelNotFoundError, match="does not exist"):
        models.resolve_model_path(str(tmp_path / "absent.gguf"))


def test_embedded_gguf_can_come_from_an_unpacked_bundle(tmp_path, monkeypatch):
    gguf = random_file(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf", 64)
    monkeypatch.setenv("MKV_EMBEDDED_GGUF", str(gguf))
    assert models.embedded_gguf() == gguf
    monkeypatch.setenv("MKV_EMBEDDED_GGUF", str(tmp_path / "absent.gguf"))
    with pytest.raises(models.ModelNotFoundError, match="MKV_EMBEDDED_GGUF"):
        models.embedded_gguf()
