"""Success checks and rewards on constructed scenes, including near-boundary cases."""

import math

import numpy as np
import pytest

from kalm_bench_plugins.clevr import goals as G

FAR = {0: (-0.45, -0.15), 1: (0.45, -0.15), 2: (0.0, 0.2), 3: (-0.45, 0.55), 4: (0.45, 0.55)}


def scene(**pos):
    """10 numbers; balls named by colour, others parked far apart."""
    xy = dict(FAR)
    names = {"red": 0, "blue": 1, "green": 2, "purple": 3, "cyan": 4}
    for k, v in pos.items():
        xy[names[k]] = v
    return np.array([c for i in range(5) for c in xy[i]], float)


def polar(center, r, deg):
    return (center[0] + r * math.cos(math.radians(deg)), center[1] + r * math.sin(math.radians(deg)))


BEHIND = G.pair_goal(0, 2, "behind")  # red behind green


@pytest.mark.parametrize("deg,expected", [(90, True), (45.2, True), (44.8, False), (134.8, True), (135.2, False)])
def test_pair_sector_edges_behind(deg, expected):
    c = (0.0, 0.2)
    assert G.pair_success(scene(green=c, red=polar(c, 0.3, deg)), BEHIND) is expected


@pytest.mark.parametrize("deg,dir_", [(0, "right"), (359.5, "right"), (44.5, "right"), (315.5, "right"),
                                      (314.5, "front"), (180, "left"), (225.5, "front"), (224.5, "left")])
def test_pair_sector_wraps(deg, dir_):
    c = (0.0, 0.2)
    s = scene(green=c, red=polar(c, 0.3, deg))
    for d in G.DIR_NAMES:
        assert G.pair_success(s, G.pair_goal(0, 2, d)) is (d == dir_)


@pytest.mark.parametrize("r,expected", [(0.3905, True), (0.3909, True), (0.3911, False), (0.45, False)])
def test_pair_distance_boundary(r, expected):
    c = (0.0, 0.2)
    assert G.pair_success(scene(green=c, red=(0.0, 0.2 + r)), BEHIND) is expected


def test_pair_tiny_component_is_zeroed():
    # dx = -0.0009 would put the angle just past 90°; KALM zeroes components under 1e-3 first.
    c = (0.0, 0.2)
    s = scene(green=c, red=(-0.0009, 0.5))
    assert G.pair_angle(s[0:2], s[4:6]) == pytest.approx(90.0, abs=1e-3)
    # A component of exactly 1e-3 is kept: dy = -0.001 with dx < 0 is LEFT at just over 180°.
    s = scene(green=c, red=(-0.3, 0.199))
    assert 180.0 < G.pair_angle(s[0:2], s[4:6]) < 180.5
    assert G.pair_success(s, G.pair_goal(0, 2, "left"))


def test_pair_uses_only_named_balls():
    c = (0.0, 0.2)
    s = scene(green=c, red=(0.0, 0.5))
    s2 = s.copy()
    s2[2:4] = (0.3, 0.3)  # move blue
    assert G.pair_success(s, BEHIND) and G.pair_success(s2, BEHIND)
    assert not G.pair_success(s, G.pair_goal(2, 0, "behind"))  # the reverse relation is FRONT
    assert G.pair_success(s, G.pair_goal(2, 0, "front"))


@pytest.mark.parametrize("direction,good", [("behind", (1, 4, 5)), ("left", (2, 5, 7)), ("front", (3, 6, 7)),
                                            ("right", (0, 4, 6))])
def test_move_action_check(direction, good):
    goal = {"type": "move", "ball": 3, "dir": direction}
    s = scene()
    for a in range(40):
        expect = a // 8 == 3 and a % 8 in good
        assert G.move_success(s, s, a, goal, "action") is expect
    with pytest.raises(ValueError):
        G.move_success(s, s, None, goal, "action")


@pytest.mark.parametrize("delta,expected", [(0.149, False), (0.1501, True), (0.3, True)])
def test_move_state_check_threshold(delta, expected):
    s0 = scene(blue=(0.0, 0.0))
    s1 = scene(blue=(-delta, 0.0))
    goal = {"type": "move", "ball": 1, "dir": "left"}
    assert G.move_success(s0, s1, None, goal, "state") is expected
    assert G.move_success(s0, s1, None, {"type": "move", "ball": 1, "dir": "right"}, "state") is False


def test_move_state_any_counts_other_balls():
    s0 = scene(blue=(0.0, 0.0))
    s1 = scene(blue=(0.0, 0.2))  # blue moved behind
    red_behind = {"type": "move", "ball": 0, "dir": "behind"}
    assert G.move_success(s0, s1, None, red_behind, "state") is False  # fixed: the named ball must move
    assert G.move_success(s0, s1, None, red_behind, "state_any") is True  # KALM's step_level_s


@pytest.mark.parametrize("delta,expected", [(0.0, True), (0.0499, True), (0.0501, False)])
def test_still_goal(delta, expected):
    s0 = scene()
    s1 = s0.copy()
    s1[7] += delta  # purple y; any ball counts for STILL
    goal = {"type": "move", "ball": 0, "dir": "still"}
    for check in ("action", "state", "state_any"):
        assert G.move_success(s0, s1, 5, goal, check) is expected


def line(angle_deg, step=0.27, y0=0.2):
    pts, x, y = [], -0.54, y0
    for _ in range(5):
        pts.append((x, y))
        x += step * math.cos(math.radians(angle_deg))
        y += step * math.sin(math.radians(angle_deg))
    return np.array(pts).reshape(-1)


@pytest.mark.parametrize("angle,expected", [(0, True), (29.9, True), (-29.9, True), (30.1, False), (-30.1, False)])
def test_order_angle_boundary(angle, expected):
    assert G.order_success(line(angle)) is expected
    assert G.hard_success(line(angle), {"type": "order"}) is expected


def test_order_needs_colour_order_and_no_spacing():
    s = line(0).reshape(5, 2)
    assert not G.order_success(s[[1, 0, 2, 3, 4]].reshape(-1))
    tight = np.array([(-0.3 + 0.01 * i, 0.0) for i in range(5)]).reshape(-1)
    assert G.order_success(tight)  # no spacing requirement in the original check
    same = tight.copy()
    same[2:4] = same[0:2]
    assert not G.order_success(same)  # coincident balls have no direction


@pytest.mark.parametrize("r,expected", [(0.3249, True), (0.3251, False)])
def test_sort_radius_boundary(r, expected):
    c = np.array([0.0, 0.2])
    pts = [c + r * np.array([math.cos(a), math.sin(a)]) for a in (0.1, 1.7, 3.3, 4.9)]
    s = np.array([pts[0], pts[1], c, pts[2], pts[3]]).reshape(-1)
    assert G.sort_success(s) is expected
    far = s.copy()
    far[0:2] = (0.45, 0.55)
    assert G.sort_success(far) is False


def test_multi_needs_all_pairs():
    c = (0.0, 0.2)
    s = scene(green=c, red=(0.0, 0.5), blue=(0.3, 0.2))
    g_ok = {"type": "multi", "pairs": [BEHIND, G.pair_goal(1, 2, "right")]}
    g_bad = {"type": "multi", "pairs": [BEHIND, G.pair_goal(1, 2, "left")]}
    assert G.hard_success(s, g_ok) and not G.hard_success(s, g_bad)
    g3 = {"type": "multi", "pairs": [BEHIND, G.pair_goal(1, 2, "right"), G.pair_goal(0, 1, "left")]}
    assert not G.hard_success(s, g3)  # red-blue are 0.42 apart


def test_kalm15_slice_reads_scrambled_numbers():
    c = np.array([0.0, 0.2])
    pts = [c + 0.2 * np.array([math.cos(a), math.sin(a)]) for a in (0.1, 1.7, 3.3, 4.9)]
    s = np.array([pts[0], pts[1], c, pts[2], pts[3]]).reshape(-1)
    goal = {"type": "sort", "center": 2}
    assert G.hard_success(s, goal, "xy")
    scrambled = G.kalm15_scramble(s, goal)
    assert scrambled.tolist() == [s[0], s[1], s[3], s[4], s[6], s[7], s[9], 0.0, 0.0, 0.0]
    assert G.hard_success(s, goal, "kalm15") == G.sort_success(scrambled)


def test_goal_arrays_and_seen_enumeration():
    seen = G.seen_goals()
    assert len(seen) == 80 and len({G.goal_key(g) for g in seen}) == 80
    assert G.goal_to_array(seen[0]).tolist() == [1, 2, 0, 0, 0, 0]
    assert G.goal_to_array(seen[19]).tolist() == [0, 0, 0, 2, 1, 0]
    assert G.goal_to_array(seen[-1]).tolist() == [0, 0, 0, 2, 1, 3]
    for g in seen:
        assert G.pair_goal_from_array(G.goal_to_array(g)) == g
    multi = {"type": "multi", "pairs": [seen[0], seen[25]]}
    arr = G.goal_to_array(multi)
    assert arr[5] == 0 and arr.shape == (18,)
    assert G.goal_to_array({"type": "order"})[5] == 2 and G.goal_to_array({"type": "sort"})[5] == 3
    assert G.goal_to_array({"type": "move", "ball": 4, "dir": "still"}).tolist() == [0, 0, 0, 0, 1, 4]


@pytest.mark.parametrize("bad", [None, {}, {"type": "pair", "src": 0, "dst": 0, "dir": "left"},
                                 {"type": "pair", "src": 0, "dst": 5, "dir": "left"},
                                 {"type": "pair", "src": 0, "dst": 1, "dir": "up"},
                                 {"type": "multi", "pairs": [{"type": "order"}, {"type": "order"}]},
                                 {"type": "dance"}])
def test_validate_goal_rejects(bad):
    with pytest.raises(ValueError):
        G.validate_goal(bad)


def test_rewards_match_kalm_data(kalm_dataset):
    errs = []
    for ep in kalm_dataset.episodes():
        for t in range(len(ep.actions)):
            ok = G.pair_success(ep.states[t + 1], ep.goal)
            errs.append(abs(G.reward(ep.goal, ep.states[t], ep.states[t + 1], ok) - ep.rewards[t]))
    assert max(errs) < 1e-5


def test_reward_variants():
    c = (0.0, 0.2)
    s0 = scene(green=c, red=(0.0, -0.1))
    s1 = scene(green=c, red=(0.0, 0.0))
    # target point is 0.195 behind green: distance 0.495 -> 0.395
    assert G.reward(BEHIND, s0, s1, False, "kalm") == pytest.approx(1.0)
    assert G.reward(BEHIND, s0, s1, True, "kalm") == 100.0
    # imaginebench: plain src-dst distance 0.3 -> 0.2, no bonus
    assert G.reward(BEHIND, s0, s1, False, "imaginebench") == pytest.approx(1.0)
    assert G.reward(BEHIND, s0, s1, True, "imaginebench") == pytest.approx(1.0)
    move = {"type": "move", "ball": 0, "dir": "left"}
    assert G.reward(move, s0, s1, True, "imaginebench") == 1.0 and G.reward(move, s0, s1, False, "kalm") == 0.0
    multi = {"type": "multi", "pairs": [BEHIND, G.pair_goal(1, 2, "right")]}
    s2 = scene(green=c, red=(0.0, 0.5))
    assert G.reward(multi, s0, s2, False, "imaginebench") == pytest.approx(10.0)
    with pytest.raises(ValueError):
        G.reward(BEHIND, s0, s1, False, "nope")


def test_kalm_goal_arrays_round_trip_every_type():
    rng = np.random.default_rng(0)
    from kalm_bench_plugins.clevr.tasks import move_goals, sample_multi_goal

    goals = G.seen_goals() + move_goals(still=True) + [sample_multi_goal(rng, 2), sample_multi_goal(rng, 3),
                                                        {"type": "order"}, {"type": "sort", "center": 2}]
    for g in goals:
        arr = G.goal_to_array(g)
        assert G.goal_from_array(arr) == g
        assert G.as_goal(arr.tolist()) == g
    assert G.as_goal('{"type": "order"}') == {"type": "order"}
    for bad in ([1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 7], [1, 2, 0, 0, 0, 9], [float("nan")] * 6, [1, 2]):
        with pytest.raises(ValueError):
            G.as_goal(bad)
