"""A bare machine (no data folder, no network): the notebook runner reports every failure, the Hub probe switches
offline at once, missing benchmark files are one clear message, and fallbacks are announced."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkvlib import runtime

ROOT = Path(__file__).resolve().parents[1]
HINT = "MKV_DATA_DIR=/path/to/data"


@pytest.fixture
def fresh_probe(monkeypatch):
    """No Hub variables set, no probe or note remembered from earlier in this process."""
    for var in runtime.HUB_VARIABLES + ("HTTPS_PROXY", "https_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(runtime, "_PROBED", {})
    monkeypatch.setattr(runtime, "_NOTED", set())


def test_unreachable_hub_switches_offline_with_one_note(fresh_probe, monkeypatch, capsys):
    calls = []

    def refuse(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert runtime.ensure_hub_reachable_or_offline() is False
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert calls == [(("huggingface.co", 443), 1.5)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unreachable" in err and "HF_HUB_OFFLINE=1" in err
    assert runtime.ensure_hub_reachable_or_offline() is False and len(calls) == 1   # the variables now decide
    assert capsys.readouterr().err == ""


def test_reachable_hub_leaves_the_variables_alone(fresh_probe, monkeypatch, capsys):
    class Conn:
        def close(self):
            pass

    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: Conn())
    assert runtime.ensure_hub_reachable_or_offline() is True
    assert not any(os.environ.get(v) for v in runtime.HUB_VARIABLES) and capsys.readouterr().err == ""


def test_a_set_variable_is_never_overridden_nor_probed(fresh_probe, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("probed although the user chose")

    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert runtime.ensure_hub_reachable_or_offline() is True
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert runtime.ensure_hub_reachable_or_offline() is False


def test_a_stuck_name_lookup_is_cut_short(fresh_probe, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: time.sleep(3))
    start = time.time()
    assert runtime.hub_reachable(timeout=0.2) is False
    assert time.time() - start < 2


def test_proxy_and_endpoint_are_what_is_probed(fresh_probe, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    assert runtime._hub_address() == ("mirror.example", 8080)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")
    assert runtime._hub_address() == ("proxy.example", 3128)


def test_lm_eval_without_data_is_one_clear_error(monkeypatch, capsys):
    from mkvlib.cli import main

    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    start = time.time()
    assert main(["lm-eval", "--budget", "0.5", "--tasks", "piqa", "--limit", "4"]) == 2
    assert time.time() - start < 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and HINT in err and "network access" in err and "--source hub" not in err
    assert "piqa/validation.jsonl" in err
    assert main(["lm-eval", "--tasks", "piqa", "--source", "hub"]) == 2       # offline: no minute of retries
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offline" in err


def test_lm_eval_command_on_a_bare_machine_exits_fast_in_one_line(tmp_path):
    """The real command line, no data folder, Hub variables unset and the Hub unreachable (a closed local port)."""
    env = {k: v for k, v in os.environ.items() if k not in runtime.HUB_VARIABLES + ("MKV_DATA_DIR",)}
    env.update(HF_ENDPOINT="https://127.0.0.1:9", OMP_NUM_THREADS="1")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "mkvlib", "lm-eval", "--budget", "0.5", "--tasks", "piqa",
                           "--limit", "4"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) <= 2, proc.stderr
    assert "unreachable" in lines[0] and HINT in lines[-1]
    assert time.time() - start < 60


def test_tasks_available_follows_the_data_folder(tmp_path, monkeypatch):
    from mkvlib.lmeval.tasks import tasks_available

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MKV_DATA_DIR", raising=False)
    assert not tasks_available(["piqa"])
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "validation.jsonl").write_text("{}\n")
    monkeypatch.setenv("MKV_DATA_DIR", str(tmp_path))
    assert tasks_available(["piqa"]) and not tasks_available(["piqa", "arc_easy"])
    monkeypatch.setenv("MKV_DATA_DIR", "")                     # empty means no data folder
    assert not tasks_available(["piqa"])


def test_fallback_corpus_is_announced_once(monkeypatch, capsys):
    from mkvlib.corpora import data_dir, default_corpus

    monkeypatch.setattr(runtime, "_NOTED", set())
    monkeypatch.setenv("MKV_DATA_DIR", "")
    assert data_dir() is None
    assert (default_corpus("calibration"), default_corpus("eval"), default_corpus("eval")) == \
        ("pydoc-train", "pydoc-test", "pydoc-test")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'pydoc-test'" in err and "MKV_DATA_DIR" in err and "not comparable" in err


def _nb(path: Path, source: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('first cell ran')"),
                                         nbformat.v4.new_code_cell(source)])
    nbformat.write(nb, path)
    return path


@pytest.mark.notebook
def test_runner_goes_on_past_a_failing_notebook_and_reports_it(tmp_path, capsys):
    import nbformat

    from mkvlib.notebooks import main

    bad = _nb(tmp_path / "01_bad.ipynb", "raise ValueError('boom')")
    good = _nb(tmp_path / "02_good.ipynb", "print('fine')")
    out = tmp_path / "out"
    assert main([str(bad), str(good), "--out", str(out)]) == 1
    text = capsys.readouterr().out
    assert "01_bad.ipynb" in text and "FAILED" in text and "ValueError: boom" in text
    summary = text[text.rindex("notebook "):]
    assert "02_good.ipynb  ok" in summary and "1 of 2 notebooks ok" in summary
    executed = nbformat.read(out / "01_bad.ipynb", as_version=4)      # the failed copy, outputs up to the failure
    assert executed.cells[0].outputs[0]["text"] == "first cell ran\n"
    assert executed.cells[1].outputs[0]["ename"] == "ValueError"
    assert (out / "02_good.ipynb").exists()
    assert main(["no-such-notebook", "--out", str(out)]) == 2


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_points_at_the_shared_data_only_when_it_exists(tmp_path):
    checkout = tmp_path / "main"
    checkout.mkdir()
    shutil.copy(ROOT / "Makefile", checkout / "Makefile")
    (checkout / "probe.mk").write_text('include Makefile\nshow:\n\t@echo "[$$MKV_DATA_DIR] $(origin MKV_DATA_DIR)"\n'
                                       "\t@echo \"[$$HF_HUB_OFFLINE]\"\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MKV_DATA_DIR", "HF_HUB_OFFLINE", "MAKEFLAGS", "MFLAGS")}

    def show(**extra):
        out = subprocess.run(["make", "-s", "-f", "probe.mk", "show"], cwd=checkout, env={**env, **extra},
                             capture_output=True, text=True, check=True).stdout
        return out.splitlines()

    assert show() == ["[] undefined", "[]"]                                  # no ../shared/data: no data folder
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert show() == [f"[{tmp_path / 'shared' / 'data'}] file", "[]"]
    assert show(MKV_DATA_DIR="")[0] == "[] environment"                      # empty: no data folder
    assert show(MKV_DATA_DIR="/elsewhere")[0] == "[/elsewhere] environment"
