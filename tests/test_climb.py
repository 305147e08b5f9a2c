"""mkvlib.climb: the shipped route and a run continuing it on one token axis, and the log-linear trend."""
import json
import math

import matplotlib
import pytest

from mkvlib import climb

matplotlib.use("Agg")


def record(fingerprint, init, tokens_seen, steps, evals, processes=1, eval_tokens=2040, seq_len=2048):
    """A training record as `mkv train` writes it; ``evals``: {step: {budget: kl}}."""
    return dict(model="m", fingerprint=fingerprint, init_fingerprint=init, tokens_seen=tokens_seen, steps=steps,
                seq_len=seq_len, config=dict(batch_size=1, grad_accum=1), hardware=dict(processes=processes),
                eval=dict(suite="ood", tokens=eval_tokens), command="mkv train ...",
                evals=[dict(step=s, rows=[dict(budget=b, kl_to_base=kl, perplexity_ratio=math.exp(kl),
                                               top1_agreement=0.5) for b, kl in by_budget.items()])
                       for s, by_budget in evals.items()])


SHIPPED = record("ship", "before", 327680, 40, {0: {0.5: 0.652}, 20: {0.5: 0.665}, 40: {0.5: 0.658}})


def climbing(per_doubling=-0.05, **kw):
    """A continuing run whose KL falls exactly ``per_doubling`` per doubling of the route's tokens."""
    steps = (0, 40, 80, 120)
    kl = {s: 0.658 + per_doubling * math.log2((327680 + 4096 * s) / 327680) for s in steps}
    return record("climbed", "ship", 4096 * 120, 120, {s: {0.5: kl[s]} for s in steps}, processes=2, **kw)


def test_points_share_one_token_axis():
    points = climb.climb_points(SHIPPED, climbing())
    shipped = [p["tokens"] for p in points if p["source"] == "shipped route"]
    assert shipped == [245760, 286720, 327680]              # the last stage: 40 steps of one 2,048-token block
    climbed = [(p["step"], p["tokens"]) for p in points if p["source"] == "climb"]
    assert climbed == [(40, 327680 + 40 * 4096), (80, 327680 + 80 * 4096), (120, 327680 + 120 * 4096)]


def test_trend_recovers_the_slope_and_carries_it():
    t = climb.trends(climb.climb_points(SHIPPED, climbing(-0.05)), at=2 ** 24)["0.5"]
    assert t["per_doubling"] == pytest.approx(-0.05, abs=1e-9) and t["per_doubling_se"] < 1e-9
    assert t["points"] == 4                                 # the shipped end, then the climb's three
    assert t["extrapolated"] == pytest.approx(0.658 - 0.05 * math.log2(2 ** 24 / 327680), abs=1e-9)
    last = 327680 + 120 * 4096
    assert t["doublings"] == pytest.approx(math.log2(2 ** 24 / last))
    assert "halves" not in t                                 # four points: too few to split


def test_halves_show_where_the_curve_bends():
    steps = range(0, 240, 20)                                # a fall, then flat from step 120 on
    kl = {s: 0.658 - 0.05 * math.log2((327680 + 4096 * min(s, 120)) / 327680) for s in steps}
    run = record("climbed", "ship", 4096 * 220, 220, {s: {0.5: kl[s]} for s in steps}, processes=2)
    first, second = climb.trends(climb.climb_points(SHIPPED, run))["0.5"]["halves"]
    assert first["tokens"][0] == 327680 and first["tokens"][1] == second["tokens"][0]
    assert first["per_doubling"] == pytest.approx(-0.05, abs=1e-9) and second["per_doubling"] == pytest.approx(0, abs=1e-9)


def test_a_noisy_trend_has_an_error():
    t = climb.log_trend([1, 2, 4, 8], [1.0, 0.9, 1.0, 0.9], at=16)
    assert t["per_doubling_se"] > 0
    with pytest.raises(ValueError, match="at least 3 points"):
        climb.log_trend([1, 2], [1.0, 0.9], at=16)


def test_refuses_a_run_on_another_yardstick_or_start():
    with pytest.raises(ValueError, match="--eval-tokens 2040"):
        climb.climb_points(SHIPPED, climbing(eval_tokens=4088))
    other = dict(climbing(), init_fingerprint="pca")
    with pytest.raises(ValueError, match="--init trained"):
        climb.climb_points(SHIPPED, other)


def test_command_writes_the_record_and_its_figure(tmp_path):
    run, shipped = tmp_path / "climb.json", tmp_path / "shipped.json"
    run.write_text(json.dumps(climbing(-0.02)))
    shipped.write_text(json.dumps(SHIPPED))
    out = tmp_path / "out" / "climb.json"
    assert climb.main(["--run", str(run), "--shipped", str(shipped), "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["command"].startswith("python -m mkvlib.climb --run ")
    assert rec["launch"].startswith("OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 ")
    assert rec["launch"].endswith(" -m mkvlib train ...")
    resumed = dict(climbing(), command="mkv train --init trained --resume c.ckpt --out c.safetensors")
    assert climb.launch_line(resumed).endswith("-m mkvlib train --init trained --out c.safetensors")
    assert rec["same_start"] == dict(budget=0.5, shipped_last=0.658, climb_step_0=0.658)
    assert rec["run"]["hardware"]["processes"] == 2 and rec["trends"]["0.5"]["per_doubling"] < 0
    fig = climb.climb_figure(rec)
    assert fig.axes[0].get_xscale() == "log" and not fig.texts           # one panel: no figure title over it
    assert [len(line.get_xdata()) for line in fig.axes[0].lines[:2]] == [3, 3]   # the last stage, then the climb
    with pytest.raises(FileNotFoundError, match="training record"):
        climb.main(["--run", str(tmp_path / "none.json"), "--out", str(out)])
