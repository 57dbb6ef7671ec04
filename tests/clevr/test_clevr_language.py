import re

import numpy as np

from kalm_bench_plugins.clevr import goals as G
from kalm_bench_plugins.clevr import language as L
from kalm_bench_plugins.clevr.tasks import move_goals, sample_multi_goal


def _norm(s):
    return re.sub(r"[^a-z ]", "", s.lower()).strip()


def test_seen_phrasings_are_the_datasets(kalm_npy):
    data = np.load(kalm_npy, allow_pickle=True).item()
    for i in range(80):
        goal = G.pair_goal_from_array(data["goals"][i, 0])
        ours = L.instructions(goal, "seen")
        assert len(ours) == 54 and len(set(ours)) == 54
        assert set(ours) == {str(s) for s in data["instructions"][i]}


def test_rephrase_phrasings_are_new():
    seen_all = {_norm(s) for g in G.seen_goals() for s in L.instructions(g, "seen")}
    for g in G.seen_goals():
        reph = L.instructions(g, "rephrase")
        assert len(set(reph)) >= 20
        assert not {_norm(s) for s in reph} & seen_all
        colours = {G.goal_key(g).split(":")[1].split(">")[0], G.goal_key(g).split(">")[1].split(":")[0]}
        assert all(all(c in s for c in colours) for s in reph)


def test_easy_and_hard_have_20_phrasings_per_type():
    for g in move_goals(still=True):
        assert len(set(L.instructions(g, "easy"))) >= 20
    rng = np.random.default_rng(0)
    for k in (2, 3):
        assert len(set(L.instructions(sample_multi_goal(rng, k), "hard"))) >= 20
    assert len(set(L.instructions({"type": "order"}, "hard"))) >= 20
    assert len(set(L.instructions({"type": "sort", "center": 2}, "hard"))) >= 20
    sort_text = L.instructions({"type": "sort", "center": 2}, "hard")
    assert any("green" in s for s in sort_text)
