"""The `mkv` command line on the embedded model: JSON output, shipped projections, clear errors (exit 2)."""
import json
from pathlib import Path

import pytest

from helpers import needs_model
from mkvlib.cli import main
from mkvlib.core.projections import Projections, shipped_path


TRAJECTORY = Path(__file__).resolve().parents[1] / "data/trajectories/SmolLM2-135M-Instruct.pca.trajectory.json"
# searched with other projections
OTHER_TRAJECTORY = TRAJECTORY.with_name("SmolLM2-135M-Instruct.trained.trajectory.json")
@needs_model
def test_eval_json_at_full_and_half_budget(capsys):
    assert main(["eval", "--json", "--corpus", "pydoc-test", "--tokens", "256", "--seq-len", "128",
                 "--budget", "1.0"]) == 0
    full = json.loads(capsys.readouterr().out)
    for key in ("perplexity", "kl_to_base", "top1_agreement", "budget", "kv_fraction", "tokens"):
        assert key in full
    assert full["kl_to_base"] < 1e-6 and full["top1_agreement"] == 1.0 and full["tokens"] == 254
    assert main(["eval", "--json", "--corpus", "pydoc-test", "--tokens", "256", "--seq-len", "128",
                 "--budget", "0.5"]) == 0
    half = json.loads(capsys.readouterr().out)
    assert half["kv_fraction"] == 0.5 and half["kl_to_base"] > 0.05 and half["perplexity"] > full["perplexity"]


@needs_model
def test_eval_at_a_position_offset(capsys):
    """The same text late in the window: the uncompressed model's perplexity is unchanged, the projected one's not."""
    argv = ["eval", "--json", "--corpus", "pydoc-test", "--tokens", "256", "--seq-len", "128", "--budgets", "1.0,0.5"]
    assert main(argv) == 0
    near = json.loads(capsys.readouterr().out)
    assert main(argv + ["--position-offset", "6000"]) == 0
    far = json.loads(capsys.readouterr().out)
    assert far["position_offset"] == 6000 and near["position_offset"] == 0
    assert far["rows"][0]["base_perplexity"] == pytest.approx(near["rows"][0]["base_perplexity"], rel=1e-3)
    assert far["rows"][0]["kl_to_base"] < 1e-6
    assert abs(far["rows"][1]["kl_to_base"] - near["rows"][1]["kl_to_base"]) > 1e-3


@needs_model
def test_eval_with_a_trajectory_file_uses_its_adaptive_ranks(capsys):
    from mkvlib.core.trajectory import Trajectory

    assert main(["eval", "--json", "--corpus", "pydoc-test", "--tokens", "256", "--seq-len", "128",
                 "--projections", "pca", "--trajectory", str(TRAJECTORY), "--budget", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    ranks = Trajectory.load(TRAJECTORY).ranks_at(0.5)
    assert out["allocation"] == "adaptive" and out["budget"] == pytest.approx(float(ranks.double().mean()) / 64)


@needs_model
def test_fit_pca_writes_projections(tmp_path, capsys):
    out = tmp_path / "p.safetensors"
    assert main(["fit-pca", "--json", "--corpus", "pydoc-train", "--tokens", "256", "--seq-len", "128",
                 "--out", str(out)]) == 0
    proj = Projections.load(out)
    assert proj.geometry == (30, 3, 64) and proj.meta["model"] == "SmolLM2-135M-Instruct"
    assert json.loads(capsys.readouterr().out)["orthogonality_error"] < 1e-5


@pytest.mark.parametrize("argv,msg", [
    (["eval", "--budget", "1.5", "--tokens", "256", "--seq-len", "128", "--corpus", "pydoc-test"], "budget"),
    (["eval", "--corpus", "/no/such/file.txt"], "not found"),
    (["eval", "--projections", "/no/such.safetensors", "--corpus", "pydoc-test", "--tokens", "256",
      "--seq-len", "128"], "no projections file"),
    (["fit-pca", "--out", "x.bin"], "safetensors"),
    (["eval", "--corpus", "pydoc-test", "--tokens", "256", "--seq-len", "128", "--position-offset", "8100"],
     "give 0 to 8064"),
    (["eval", "--projections", "pca", "--trajectory", str(OTHER_TRAJECTORY), "--corpus", "pydoc-test", "--tokens", "256",
      "--seq-len", "128"], "was searched with projections"),
    (["lm-eval", "--sweep", "x.csv", "--methods", "pca-uniform", "--trajectory", str(OTHER_TRAJECTORY), "--tasks", "piqa"],
     "add trained-adaptive"),
    (["lm-eval", "--sweep", "x.csv", "--projections", "trained", "--tasks", "piqa"], "no effect with --sweep"),
])
@needs_model
def test_bad_input_is_a_clear_error(argv, msg, capsys):
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_shipped_pca_projections_are_present_and_valid():
    proj = Projections.load(shipped_path("pca", "SmolLM2-135M-Instruct"))
    assert proj.geometry == (30, 3, 64) and proj.orthogonality_error() < 1e-5
