"""The ``paper-like`` data preset: behaviour noise like KALM's released CLEVR data (80 episodes)."""

import pytest

from kalm_bench.errors import UserError
from kalm_bench_plugins.clevr import data as D
from kalm_bench_plugins.clevr.plugin import ClevrRobot

N = 320  # four passes over the 80 goals; about 8 s


@pytest.fixture(scope="module")
def paper_like():
    return ClevrRobot().generate_dataset(N, seed=0, preset="paper-like")


def test_preset_expands_to_its_options(paper_like):
    a = paper_like.attrs
    assert (a["preset"], a["epsilon"], a["keep_failures"], a["horizon"]) == ("paper-like", 0.7, False, 50)
    assert D.data_options("paper-like", epsilon=0.1) == {"epsilon": 0.1, "keep_failures": False, "horizon": 50}
    ds = ClevrRobot().generate_dataset(2, seed=0, preset="paper-like", epsilon=0.0)
    assert ds.attrs["epsilon"] == 0.0 and ds.attrs["preset"] == "paper-like"


def test_paper_like_matches_kalm_data(paper_like, kalm_dataset):
    ours = D.behaviour_stats(paper_like, expert=False)
    ref = D.behaviour_stats(kalm_dataset, expert=False)
    # KALM: 80/80 successful, one per goal; lengths 2..49, mean 11.2, q25 3, q75 13.25, geometric mean 6.7.
    assert ref["success_rate"] == 1.0 and ref["distinct_goals"] == 80 and ref["length_max"] < 50
    # keep_failures False and a 50-push limit: only successes, none longer than KALM's padding.
    assert ours["success_rate"] == 1.0 and ours["distinct_goals"] == 80 and ours["length_max"] <= 50
    assert paper_like.n_episodes >= 0.98 * N  # 3,995 of 4,000 succeed at seed 0
    # Lengths (seed 0, 4,000 episodes: geometric mean 6.65, mean 9.8, q25 4, q75 14; seeds 0-2 at this N:
    # 6.5-6.8, 9.5-10.0, 4, 13-14). The margins are about two standard errors of KALM's 80-episode values
    # (geometric mean 6.7 +- 0.7, mean 11.2 +- 1.4); the noiseless expert (2.4, 2.9) is far outside them.
    assert ours["length_geomean"] == pytest.approx(ref["length_geomean"], rel=0.2)
    assert ours["length_mean"] == pytest.approx(ref["length_mean"], rel=0.3)
    assert abs(ours["length_q25"] - ref["length_q25"]) <= 1.5
    assert abs(ours["length_q75"] - ref["length_q75"]) <= 4
    # Pushes that bring the source closer to its target: KALM 0.70, ours 0.63.
    assert ours["progress_share"] == pytest.approx(ref["progress_share"], abs=0.12)
    # Not matched (documented): a uniformly random push often moves a third ball, KALM's pushes rarely do.
    assert ref["other_ball_share"] < 0.1 < 0.3 < ours["other_ball_share"]


def test_noiseless_expert_is_outside_the_margins(kalm_dataset):
    ds = ClevrRobot().generate_dataset(80, seed=0, preset="expert")
    ours, ref = D.behaviour_stats(ds, expert=False), D.behaviour_stats(kalm_dataset, expert=False)
    assert ours["length_geomean"] < 0.8 * ref["length_geomean"] and ours["length_mean"] < 0.7 * ref["length_mean"]


def test_unknown_preset_is_an_error():
    with pytest.raises(UserError, match="unknown data preset 'paper'.*expert, paper-like"):
        ClevrRobot().generate_dataset(1, 0, preset="paper")
