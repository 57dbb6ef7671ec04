"""Training through ``Algorithm.train``: checkpoints, progress, save/load, seeds, real+imaginary mixing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from orl_helpers import make_ctx, synthetic

from kalm_bench.api import PolicyBatch
from kalm_bench.errors import UserError
from kalm_bench.plugins import build_registry

SMALL = {"batch_size": 16, "hidden_units": [32, 32]}
ALGOS = [("discrete-bc", "discrete"), ("discrete-cql", "discrete"), ("bc", "continuous"), ("cql", "continuous"),
         ("td3+bc", "continuous"), ("awac", "continuous"), ("iql", "continuous")]


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def _batch(data, rows=slice(0, 7)) -> PolicyBatch:
    states = data.states[rows]
    emb = data.embeddings[data.instruction_ids[rows]]
    return PolicyBatch(states=states, instructions=["x"] * len(states), embeddings=emb,
                       t=np.zeros(len(states), np.int64), initial_states=states)


def _weights(path):
    return torch.load(path / "modules.pt", weights_only=True)


@pytest.mark.parametrize("name,kind", ALGOS)
def test_train_saves_checkpoints_that_load_and_act(registry, tmp_path, name, kind):
    algo = registry.get("algorithms", name)(registry.get("algorithms", name).make_config(overrides=SMALL))
    data = synthetic(kind=kind, action_size=5 if kind == "discrete" else 3)
    ctx, saved, progress = make_ctx(algo, data, tmp_path, steps=25, every=10)
    algo.train(ctx)
    assert sorted(saved) == [10, 20, 25] == ctx.checkpoint_steps()
    assert progress[-1] == (25, 25)
    meta = json.loads((saved[25] / "policy.json").read_text())
    assert meta["algorithm"] == name and meta["step"] == 25 and meta["observation_dim"] == 6 + 8
    policy = algo.load_policy(saved[25], ctx)
    actions = policy.act(_batch(data))
    if kind == "discrete":
        assert actions.shape == (7,) and actions.dtype == np.int64 and ((0 <= actions) & (actions < 5)).all()
    else:
        assert actions.shape == (7, 3) and actions.dtype == np.float32 and np.isfinite(actions).all()
    # a checkpoint is a frozen snapshot: the step-10 weights differ from the final ones
    w10, w25 = _weights(saved[10]), _weights(saved[25])
    assert any(not torch.equal(a, b) for k in w10 for a, b in zip(w10[k].values(), w25[k].values()))
    # loading is exact: the reloaded policy acts like a policy built from the same weights twice
    np.testing.assert_array_equal(actions, algo.load_policy(saved[25], ctx).act(_batch(data)))


@pytest.mark.parametrize("name,kind", [("discrete-cql", "discrete"), ("td3+bc", "continuous")])
def test_same_seed_same_weights_other_seed_different(registry, tmp_path, name, kind):
    cls = registry.get("algorithms", name)
    data = synthetic(kind=kind, action_size=5 if kind == "discrete" else 3)
    runs = {}
    for label, seed in (("a", 3), ("b", 3), ("c", 4)):
        algo = cls(cls.make_config(overrides=SMALL))
        ctx, saved, _ = make_ctx(algo, data, tmp_path / label, steps=15, every=15, seed=seed)
        algo.train(ctx)
        runs[label] = _weights(saved[15])
    same = all(torch.equal(x, y) for k in runs["a"] for x, y in zip(runs["a"][k].values(), runs["b"][k].values()))
    diff = any(not torch.equal(x, y) for k in runs["a"] for x, y in zip(runs["a"][k].values(), runs["c"][k].values()))
    assert same and diff


def test_imaginary_data_is_mixed_into_every_batch(registry, tmp_path, monkeypatch):
    from kalm_bench_plugins.offline_rl import sampler as sampler_mod

    seen = []
    real_init = sampler_mod.TransitionSampler.__init__

    def spy(self, sources, *args, **kw):
        seen.append([(len(d), k) for d, k in sources])
        real_init(self, sources, *args, **kw)

    monkeypatch.setattr(sampler_mod.TransitionSampler, "__init__", spy)
    cls = registry.get("algorithms", "discrete-bc")
    real, imag = synthetic(n_eps=30, seed=1), synthetic(n_eps=12, seed=2)
    algo = cls(cls.make_config(overrides=SMALL))
    ctx, saved, _ = make_ctx(algo, real, tmp_path / "kalm", imaginary=imag, fraction=0.5, steps=5, every=5)
    algo.train(ctx)
    ctx, saved, _ = make_ctx(algo, real, tmp_path / "base", imaginary=None, steps=5, every=5)
    algo.train(ctx)
    assert seen == [[(300, 8), (120, 8)], [(300, 16)]]
    meta = json.loads((saved[5] / "policy.json").read_text())
    assert meta["batch"] == {"real": 16, "imaginary": 0}


def test_wrong_action_kind_and_empty_data_are_user_errors(registry, tmp_path):
    cls = registry.get("algorithms", "td3+bc")
    algo = cls(cls.make_config(overrides=SMALL))
    ctx, _, _ = make_ctx(algo, synthetic(kind="discrete"), tmp_path)
    with pytest.raises(UserError, match="needs continuous actions"):
        algo.train(ctx)
    empty = synthetic(n_eps=0, kind="continuous", action_size=3)
    ctx, _, _ = make_ctx(algo, empty, tmp_path, kind="continuous", action_size=3)
    with pytest.raises(UserError, match="no transitions"):
        algo.train(ctx)


def test_policy_rejects_observations_of_the_wrong_size(registry, tmp_path):
    cls = registry.get("algorithms", "discrete-bc")
    algo = cls(cls.make_config(overrides=SMALL))
    data = synthetic()
    ctx, saved, _ = make_ctx(algo, data, tmp_path, steps=2, every=2)
    algo.train(ctx)
    policy = algo.load_policy(saved[2], ctx)
    batch = _batch(data)
    batch.embeddings = np.zeros((len(batch.states), 384), np.float32)
    with pytest.raises(ValueError, match="same text encoder"):
        policy.act(batch)


def test_broken_checkpoints_give_errors_naming_the_file(registry, tmp_path):
    cls = registry.get("algorithms", "discrete-bc")
    algo = cls(cls.make_config(overrides=SMALL))
    ctx, saved, _ = make_ctx(algo, synthetic(), tmp_path, steps=2, every=2)
    algo.train(ctx)
    path = saved[2]
    weights = (path / "modules.pt").read_bytes()
    (path / "modules.pt").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(UserError, match="cannot load policy weights") as err:
        algo.load_policy(path, ctx)
    assert err.value.file == path / "modules.pt"
    (path / "modules.pt").unlink()
    with pytest.raises(UserError, match="weights are missing"):
        algo.load_policy(path, ctx)
    (path / "policy.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt policy metadata") as err:
        algo.load_policy(path, ctx)
    assert err.value.file == path / "policy.json"
    with pytest.raises(UserError, match="metadata is missing"):
        algo.load_policy(tmp_path / "nowhere", ctx)


# "standard"/"min_max": the option alone (fitted directly on the arrays); "with-reward-scaler": a d3rlpy
# reward scaler as well, which goes through d3rlpy's own MDPDataset fitting.
@pytest.mark.parametrize("how", ["standard", "min_max", "with-reward-scaler"])
def test_d3rlpy_scalers_are_fitted_on_the_training_data_and_saved(registry, tmp_path, how):
    import d3rlpy

    cls = registry.get("algorithms", "td3+bc")
    kind = "standard" if how == "with-reward-scaler" else how
    extra: dict = {"observation_scaler": kind}
    if how == "with-reward-scaler":
        extra["d3rlpy"] = {"reward_scaler": {"type": "multiply", "params": {"multiplier": 0.5}}}
    algo = cls(cls.make_config(overrides=dict(SMALL, **extra)))
    # real data ending in terminals and time-outs, imaginary data from other instructions: both are fitted
    data = synthetic(kind="continuous", action_size=3)
    imag = synthetic(n_eps=12, kind="continuous", action_size=3, n_instr=3, seed=5)
    ctx, saved, _ = make_ctx(algo, data, tmp_path, steps=4, every=4, imaginary=imag)
    algo.train(ctx)
    meta = json.loads((saved[4] / "policy.json").read_text())
    scaler = meta["d3rlpy_config"]["config"]["params"]["observation_scaler"]
    assert scaler["type"] == kind
    # the same statistics d3rlpy's fit() computes on the equivalent MDPDataset (its transitions)
    ref = (d3rlpy.preprocessing.StandardObservationScaler() if kind == "standard"
           else d3rlpy.preprocessing.MinMaxObservationScaler())
    both = [d3rlpy.dataset.MDPDataset(observations=d.observations, actions=d.actions, rewards=d.rewards,
                                      terminals=d.terminals, timeouts=d.timeouts) for d in (data, imag)]
    ref.fit_with_transition_picker(both[0].episodes + both[1].episodes, both[0].transition_picker)
    for field in ("mean", "std") if kind == "standard" else ("minimum", "maximum"):
        np.testing.assert_allclose(scaler["params"][field], getattr(ref, field), rtol=1e-6, atol=1e-7)
    policy = algo.load_policy(saved[4], ctx)
    assert policy.algo.config.observation_scaler.built
    assert np.isfinite(policy.act(_batch(data))).all()
    if how == "with-reward-scaler":
        assert meta["d3rlpy_config"]["config"]["params"]["reward_scaler"]["params"]["multiplier"] == 0.5


def test_observation_scaler_is_an_option_not_a_d3rlpy_field(registry):
    cls = registry.get("algorithms", "discrete-cql")
    with pytest.raises(ValueError, match="observation_scaler.*set it directly"):
        cls.make_config(overrides={"d3rlpy": {"observation_scaler": {"type": "standard", "params": {}}}})
    with pytest.raises(ValueError, match="observation_scaler"):
        cls.make_config(overrides={"observation_scaler": "zscore"})
    assert cls.make_config().observation_scaler == "none"
