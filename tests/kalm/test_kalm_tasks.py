"""Grounding tasks: example construction and loss masks (numpy only)."""

from __future__ import annotations

import json

import numpy as np

from kalm_bench.datasets import Episode, TrajectoryDataset
from kalm_bench_plugins.kalm import tasks as T


def toy_dataset(kind: str = "discrete") -> TrajectoryDataset:
    rng = np.random.default_rng(0)
    eps = []
    for i, n in enumerate([3, 1, 0, 2]):
        acts = rng.integers(0, 5, n) if kind == "discrete" else rng.normal(size=(n, 2)).astype(np.float32)
        eps.append(Episode(states=rng.normal(size=(n + 1, 4)).astype(np.float32), actions=acts,
                           rewards=np.arange(n, dtype=np.float32) + 10 * i, instruction=f"push ball {i}.",
                           goal={"g": i}, level="seen", success=i != 3))
    return TrajectoryDataset.from_episodes(eps, env="toy", action_kind=kind, action_size=5 if kind == "discrete"
                                           else 2, state_dim=4)


def numeric(segs, kind):
    return [s for s in segs if s["kind"] == kind]


def test_registry_lists_backends_and_tasks():
    from kalm_bench.plugins import build_registry

    reg = build_registry()
    assert {"embedded", "smollm2", "hf-local"} <= set(reg.names("llm_backends"))
    assert {"dynamics", "explanation", "generation", "consequence"} <= set(reg.names("grounding_tasks"))


def test_one_example_per_nonempty_episode_per_epoch():
    ds = toy_dataset()
    for cls in T.TASKS:
        exs = cls().examples(ds, np.random.default_rng(0))
        assert [e["episode"] for e in exs] == [0, 1, 3]  # the empty episode 2 is skipped
        assert all(e["task"] == cls.name for e in exs)
        assert [json.loads(e["goal"]) for e in exs] == [{"g": 0}, {"g": 1}, {"g": 3}]


def test_generation_targets_whole_rollout_with_success_and_reward_labels():
    ds = toy_dataset()
    ex = T.RolloutGeneration().examples(ds, np.random.default_rng(0))[0]
    segs = ex["segments"]
    assert segs[0]["text"].startswith("Translate the textual instruction")
    inst = [s for s in segs if s["kind"] == "text" and s["role"] == "instruction"]
    assert inst[0]["text"] == "push ball 0" and not inst[0]["loss"]  # trailing '.' stripped, no text loss
    st, ac = numeric(segs, "state"), numeric(segs, "action")
    assert len(st) == 4 and len(ac) == 3 and all(s["loss"] for s in st + ac)
    np.testing.assert_allclose(st[0]["value"], ds.states[0])
    np.testing.assert_allclose(st[-1]["value"], ds.next_states[2])
    assert [s["done"] for s in st] == [0.0, 0.0, 0.0, 1.0]
    assert [s["reward"] for s in st] == [None, 0.0, 1.0, 2.0]
    # Interleaving s0 a0 s1 a1 ...
    kinds = [s["kind"] for s in segs if s["kind"] != "text"]
    assert kinds == ["state", "action"] * 3 + ["state"]
    failed = T.RolloutGeneration().examples(ds, np.random.default_rng(0))[2]  # episode 3 did not succeed
    assert all(s["done"] == 0.0 for s in numeric(failed["segments"], "state"))


def test_dynamics_predicts_only_next_state_of_a_random_step():
    ds = toy_dataset()
    ks = set()
    for seed in range(20):
        ex = T.DynamicsPrediction().examples(ds, np.random.default_rng(seed))[0]
        k = ex["step"]
        ks.add(k)
        st, ac = numeric(ex["segments"], "state"), numeric(ex["segments"], "action")
        assert [s["loss"] for s in st] == [False, True] and [a["loss"] for a in ac] == [False]
        np.testing.assert_allclose(st[0]["value"], ds.states[k])
        np.testing.assert_allclose(st[1]["value"], ds.next_states[k])
        assert ac[0]["value"] == int(ds.actions[k])
        assert not any(s["kind"] == "text" and s["loss"] for s in ex["segments"])
        assert not any(s["kind"] == "text" and s["role"] == "instruction" for s in ex["segments"])
    assert ks == {0, 1, 2}


def test_consequence_predicts_final_state_from_initial_state_and_text():
    ds = toy_dataset()
    ex = T.ConsequencePrediction().examples(ds, np.random.default_rng(0))[0]
    st = numeric(ex["segments"], "state")
    assert [s["loss"] for s in st] == [False, True]
    np.testing.assert_allclose(st[0]["value"], ds.states[0])
    np.testing.assert_allclose(st[1]["value"], ds.next_states[2])
    assert not numeric(ex["segments"], "action")


def test_explanation_loss_covers_only_the_instruction_text():
    ds = toy_dataset("continuous")
    ex = T.RolloutExplanation().examples(ds, np.random.default_rng(0))[0]
    segs = ex["segments"]
    assert not any(s["loss"] for s in segs if s["kind"] != "text")
    lossy = [s["text"] for s in segs if s["kind"] == "text" and s["loss"]]
    assert lossy == ["push ball 0", "."]
    assert numeric(segs, "action")[0]["value"].shape == (2,)
    unseen = T.explanation_segments(np.zeros((2, 4)), np.zeros((1, 2)), "continuous", None, seen=False)
    assert unseen[0]["text"].startswith("Suppose you are playing") and not any(s["loss"] for s in unseen)
