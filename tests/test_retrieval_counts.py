"""Retrieval counts with their uncertainty: the Wilson interval and the rule for saying one count beats another."""
import pytest

from mkvlib.docs.markdown import count
from mkvlib.retrieval import separated, wilson_interval


def test_wilson_interval_known_values_and_edges():
    lo, hi = wilson_interval(8, 8)
    assert hi == 1.0 and lo == pytest.approx(0.6756, abs=1e-4)
    lo, hi = wilson_interval(0, 8)
    assert lo == 0.0 and hi == pytest.approx(0.3244, abs=1e-4)
    lo, hi = wilson_interval(4, 8)
    assert (lo, hi) == pytest.approx((0.2152, 0.7848), abs=1e-4) and lo + hi == pytest.approx(1.0)
    assert wilson_interval(40, 80)[1] - wilson_interval(40, 80)[0] < hi - lo, "more prompts, a narrower interval"


def test_only_separated_intervals_make_a_claim():
    assert separated((8, 8), (0, 8))
    assert not separated((8, 8), (5, 8)) and not separated((6, 8), (3, 8))
    assert separated((60, 64), (30, 64))


@pytest.mark.parametrize("bad", [(9, 8), (-1, 8), (0, 0)])
def test_impossible_counts_are_clear_errors(bad):
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        wilson_interval(*bad)


def test_count_renders_the_interval():
    assert count(8, 8) == "8/8 (68–100%)" and count(2, 8) == "2/8 (7–59%)"
