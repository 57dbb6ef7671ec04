"""LLM as policy: the grounded LLM acting in the real environment (embedded and Hugging Face backends)."""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import numpy as np
import pytest

from kalm_bench.api import GroundingContext, LLMHandle, PolicyBatch
from kalm_bench.datasets import Episode, TrajectoryDataset
from kalm_bench.errors import UserError

from dt_helpers import (TINY_EMBEDDED, kalm_hf_test_module, kalm_tasks, make_ctx, mute_backend, run_cli,
                        synthetic)

TINY = TINY_EMBEDDED


@pytest.fixture(scope="module")
def clevr(registry):
    if "clevr-robot" not in registry.names("envs"):
        pytest.skip("the clevr-robot environment plugin is not installed")
    env = registry.get("envs", "clevr-robot")()
    return env, env.generate_dataset(60, 0)


@pytest.fixture(scope="module")
def embedded(registry, clevr, tmp_path_factory):
    env, ds = clevr
    backend = registry.get("llm_backends", "embedded")(TINY)
    wd = tmp_path_factory.mktemp("embedded-llm")
    backend.ground(GroundingContext(ds, env, kalm_tasks(), 0, wd))
    return backend, wd


def _batch(insts, hist_s, hist_a):
    return PolicyBatch(states=np.stack([h[-1] for h in hist_s]), instructions=list(insts), embeddings=None,
                       t=np.array([len(a) for a in hist_a]), initial_states=np.stack([h[0] for h in hist_s]),
                       history_states=list(hist_s), history_actions=list(hist_a))


# Two float code paths (KV cache vs recomputation, a batch vs one row, left padding) may round the logits
# differently in the last bits on another CPU, so greedy actions are compared through the logits of a
# reference path: every action must be a greedy action of those logits up to ATOL. Measured here (AVX-512 and
# AVX2 dispatch alike): the paths differ by at most 1.2e-7 in a logit, a row's logits spread over >= 0.44,
# and the smallest top-2 gap met is 5e-6 (the tiny random Llama), too close for bit-equal argmaxes.
ATOL = 1e-5


def _greedy(logits, *actions, atol=ATOL):
    """Each of ``actions`` (one per row) is an argmax of ``logits`` (rows × actions) up to ``atol``."""
    logits = np.asarray(logits, np.float64)
    best = logits.max(-1)
    for a in actions:
        picked = np.take_along_axis(logits, np.asarray(a, np.int64).reshape(-1, 1), -1)[:, 0]
        assert (picked >= best - atol).all(), (np.asarray(a), picked, best)


def _logged(policy):
    """The logits behind every action the policy decodes (one forward pass per lockstep call)."""
    logits = []
    decode = policy._decode

    def keep(out):
        logits.append(out.float().cpu().numpy())
        return decode(out)

    policy._decode = keep
    return logits


def _imagined(backend, wd, env, n=6, steps=5):
    """Rollouts the model generates itself: fed back as 'real' history, the policy must pick the same actions."""
    engine = backend.engine(wd)
    cases = env.test_cases("seen", n, 0)
    insts = [c["instruction"] for c in cases]
    s0 = np.stack([np.asarray(c["initial_state"], np.float32) for c in cases])
    return insts, engine.generate(insts, s0, steps, None, n)


def test_registered(registry):
    cls = registry.get("algorithms", "llm-policy")
    assert cls.needs_llm and set(cls.action_kinds) == {"discrete", "continuous"} and cls.version == "1"
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        cls.Config(act_batch_size=0)


def test_act_reproduces_generation_on_its_own_history(embedded, clevr):
    backend, wd = embedded
    env, _ = clevr
    policy = backend.policy(wd, env)
    insts, rollouts = _imagined(backend, wd, env)
    for t in range(5):
        hs, ha = [r.states[:t + 1] for r in rollouts], [r.actions[:t] for r in rollouts]
        got = policy.act(_batch(insts, hs, ha))
        assert got.dtype == np.int64 and got.shape == (len(insts),)
        # generation's action and the policy's (KV-cache extension after t = 0) are greedy for the recomputed logits
        _greedy(policy.actor.logits(insts, np.stack(hs), np.stack(ha)).numpy(), got, [r.actions[t] for r in rollouts])


def test_batching_mixed_lengths_and_determinism(embedded, clevr):
    backend, wd = embedded
    env, _ = clevr
    policy = backend.policy(wd, env)
    insts, rollouts = _imagined(backend, wd, env)
    ts = [0, 3, 1, 3, 5, 2]
    hs, ha = [r.states[:t + 1] for r, t in zip(rollouts, ts)], [r.actions[:t] for r, t in zip(rollouts, ts)]
    together = policy.act(_batch(insts, hs, ha))
    alone = [policy.act(_batch([i], [s], [a]))[0] for i, s, a in zip(insts, hs, ha)]
    ref = np.concatenate([policy.actor.logits([i], s[None], a[None]).numpy() for i, s, a in zip(insts, hs, ha)])
    _greedy(ref, together, alone)  # shared forward passes pick each row's own greedy action
    policy.batch_size = 2
    _greedy(ref, policy.act(_batch(insts, hs, ha)))
    np.testing.assert_array_equal(policy.act(_batch(insts, hs, ha)), policy.act(_batch(insts, hs, ha)))  # same path
    assert ((0 <= together) & (together < clevr[1].action_size)).all()


@pytest.mark.parametrize("level", ["seen", "hard"])
def test_kv_cache_gives_the_same_actions(embedded, clevr, level):
    backend, wd = embedded
    env, _ = clevr
    cached, plain = backend.policy(wd, env), backend.policy(wd, env)
    plain.kv_cache = False
    calls = _kv_cache_matches_recomputation(cached, plain, env, level, 12)
    assert plain.cached_calls == 0 and cached.cached_calls == calls - 1 > 0


def _kv_cache_matches_recomputation(cached, plain, env, level, n):
    """One evaluation driven by the cached policy; the plain one recomputes each step of the same batches
    (so one near-tie rounded the other way cannot send the two down different episodes). Returns the steps."""
    got_c, got_p = _logged(cached), _logged(plain)
    act = cached.act

    def both(batch):
        plain.act(batch)
        return act(batch)

    cached.act = both
    res = env.evaluate(cached, level, env.test_cases(level, n, 0), 0)
    assert len(res.success) == n and len(got_c) == len(got_p) > 1
    for c, p in zip(got_c, got_p):
        np.testing.assert_allclose(c, p, rtol=0, atol=ATOL)
        _greedy(p, c.argmax(-1))
    return len(got_c)


def test_action_depends_on_the_real_history(embedded, clevr):
    backend, wd = embedded
    env, ds = clevr
    actor = backend.policy(wd, env).actor
    insts, rollouts = _imagined(backend, wd, env, n=4, steps=3)
    states = np.stack([r.states[:3] for r in rollouts])
    actions = np.stack([r.actions[:2] for r in rollouts])
    base = actor.logits(insts, states, actions).numpy()
    # Same instruction and current state, different past: another real state in the middle.
    other = states.copy()
    other[:, 1] = ds.states[:4]
    assert not np.allclose(actor.logits(insts, other, actions).numpy(), base, atol=1e-5)
    other_a = (actions + 7) % ds.action_size
    assert not np.allclose(actor.logits(insts, states, other_a).numpy(), base, atol=1e-5)
    assert not np.allclose(actor.logits(insts[::-1], states, actions).numpy(), base, atol=1e-5)


def test_continuous_actions_decode_with_the_normaliser(registry, tmp_path):
    rng = np.random.default_rng(0)
    eps = []
    for i in range(12):
        n = 4
        acts = (rng.normal(size=(n, 2)) * 5 + 20).astype(np.float32)  # far from 0: decoding must un-normalise
        eps.append(Episode(states=rng.normal(size=(n + 1, 3)).astype(np.float32), actions=acts,
                           rewards=np.zeros(n, np.float32), instruction=f"reach target {i % 3}.",
                           goal={"g": i % 3}, level="seen", success=True))
    ds = TrajectoryDataset.from_episodes(eps, env="toy", action_kind="continuous", action_size=2)
    env = types.SimpleNamespace(name="toy", action_kind="continuous", horizon=6, can_label=False)
    backend = registry.get("llm_backends", "embedded")(dict(TINY, epochs=30))
    backend.ground(GroundingContext(ds, env, kalm_tasks(), 0, tmp_path))
    policy = backend.policy(tmp_path, env)
    engine = backend.engine(tmp_path)
    insts = ["reach target 0.", "reach target 1."]
    ro = engine.generate(insts, ds.states[:2], 3, None, 2)
    for t in range(3):
        got = policy.act(_batch(insts, [r.states[:t + 1] for r in ro], [r.actions[:t] for r in ro]))
        assert got.dtype == np.float32 and got.shape == (2, 2)
        np.testing.assert_allclose(got, [r.actions[t] for r in ro], rtol=1e-4, atol=1e-3)
    # in the data's units (20 ± 5), not the normalised ones: measured 18.7 here, 0.40 before decoding
    assert np.abs(got).min() > 5
    assert policy.cached_calls == 2  # steps 1 and 2 extended step 0's cache
    with pytest.raises(UserError, match="actions"):
        backend.policy(tmp_path, types.SimpleNamespace(name="disc", action_kind="discrete", horizon=6))


def test_history_longer_than_the_positions_keeps_the_latest_steps(embedded, clevr):
    backend, wd = embedded
    env, ds = clevr
    policy = backend.policy(wd, env)
    window = policy.actor.max_steps()
    rng = np.random.default_rng(0)
    t = window + 7
    states = [ds.states[rng.integers(0, len(ds.states), t + 1)] for _ in range(2)]
    actions = [rng.integers(0, ds.action_size, t) for _ in range(2)]
    insts = ["push the red ball to the left of the blue ball"] * 2
    got = policy.act(_batch(insts, states, actions))
    trimmed = policy.act(_batch(insts, [s[7:] for s in states], [a[7:] for a in actions]))
    np.testing.assert_array_equal(got, trimmed)


def test_algorithm_saves_one_step0_checkpoint_and_reloads(registry, embedded, clevr, tmp_path):
    backend, wd = embedded
    env, _ = clevr
    algo = registry.get("algorithms", "llm-policy")({"act_batch_size": 3})
    ctx, saved, progress = make_ctx(algo, synthetic(), tmp_path, steps=50, every=10, env=env)
    ctx.llm = LLMHandle(backend, wd)
    algo.train(ctx)
    assert list(saved) == [0] and progress[-1] == (1, 1)
    info = json.loads((saved[0] / "llm_policy.json").read_text())
    assert info["backend"] == "embedded" and info["model_dir"] == str(wd)
    policy = algo.load_policy(saved[0], ctx)
    assert policy.batch_size == 3
    res = env.evaluate(policy, "seen", env.test_cases("seen", 6, 0), 0)
    assert len(res.success) == 6 and (res.lengths >= 1).all()


def test_algorithm_errors(registry, embedded, clevr, tmp_path):
    backend, wd = embedded
    env, _ = clevr
    algo = registry.get("algorithms", "llm-policy")()
    ctx, _, _ = make_ctx(algo, synthetic(), tmp_path, env=env)
    with pytest.raises(UserError, match="grounded LLM"):
        algo.train(ctx)
    ctx.llm = LLMHandle(mute_backend(), tmp_path)
    with pytest.raises(UserError, match="cannot act as a policy"):
        algo.train(ctx)
    ctx.llm = LLMHandle(backend, wd)
    ck = tmp_path / "ck"
    ck.mkdir()
    with pytest.raises(UserError) as e:
        algo.load_policy(ck, ctx)
    assert e.value.file == ck / "llm_policy.json"
    (ck / "llm_policy.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        algo.load_policy(ck, ctx)
    (ck / "llm_policy.json").write_text(json.dumps({"backend": "hf-local"}))
    with pytest.raises(UserError, match="hf-local"):
        algo.load_policy(ck, ctx)
    with pytest.raises(UserError, match="kalm_model.json"):
        backend.policy(tmp_path / "nowhere", env)


def test_hf_backend_acts_like_its_generation(registry, clevr, tmp_path):
    """The causal-LM path with the tiny random Llama that tests/kalm build (no downloads)."""
    mod = kalm_hf_test_module()
    env, ds = clevr
    from kalm_bench_plugins.kalm import tasks as T

    corpus = [str(s) for s in ds.instructions] + [T.GENERATION_PREFIX, T.EXPLANATION_PREFIX, T.DYNAMICS_PREFIX]
    llama = mod.make_tiny_llama(tmp_path / "llama", corpus)
    small = TrajectoryDataset.from_episodes(list(ds.episodes())[:16], env=ds.env, action_kind="discrete",
                                            action_size=int(ds.action_size))
    backend = registry.get("llm_backends", "hf-local")(dict(mod.SMALL, model_dir=str(llama)))
    wd = tmp_path / "grounded"
    wd.mkdir()
    backend.ground(GroundingContext(small, env, kalm_tasks(), 0, wd))
    policy = backend.policy(wd, env)
    insts, rollouts = _imagined(backend, wd, env, n=3, steps=3)
    for t in range(3):
        hs, ha = [r.states[:t + 1] for r in rollouts], [r.actions[:t] for r in rollouts]
        got = policy.act(_batch(insts, hs, ha))
        _greedy(policy.actor.logits(insts, np.stack(hs), np.stack(ha)).numpy(), got, [r.actions[t] for r in rollouts])
    # Episodes at different steps in one (left-padded) batch give what each gives alone.
    hs, ha = [rollouts[0].states[:1], rollouts[1].states[:3]], [rollouts[0].actions[:0], rollouts[1].actions[:2]]
    together = policy.act(_batch(insts[:2], hs, ha))
    alone = [policy.act(_batch([i], [s], [a]))[0] for i, s, a in zip(insts[:2], hs, ha)]
    _greedy(np.concatenate([policy.actor.logits([i], s[None], a[None]).numpy() for i, s, a in zip(insts[:2], hs, ha)]),
            together, alone)
    # The cached path (the evaluator's lockstep calls) picks what recomputation picks.
    plain = backend.policy(wd, env)
    plain.kv_cache = False
    cached = backend.policy(wd, env)
    _kv_cache_matches_recomputation(cached, plain, env, "seen", 3)
    assert cached.cached_calls > 0 and plain.cached_calls == 0


REFERENCE = Path(__file__).resolve().parents[2] / "suites" / "reference" / "kalm_paper_results.csv"
SUITE = """\
suite: llm-policy-tiny
version: 1
env: {name: clevr-robot, levels: [seen, hard]}
data: {episodes: 100, seed: 0}
encoder: {name: minilm}
llm: {backend: embedded, preset: tiny, seed: 0, config: {diagnostics_explain: 0, diagnostics_goals: 0}}
algorithms:
  - {name: llm-policy, label: LLM, reference: LLM-as-policy}
seeds: [0]
train: {steps: 10, checkpoint_every: 5}
eval: {episodes: 10, last_k: 2}
report: {reference: REFERENCE, reference_env: clevr}
"""


def test_the_training_budget_does_not_key_its_train_stage(registry, tmp_path):
    """It makes no updates, so a new train.steps must not rebuild (re-evaluate) it."""
    if "clevr-robot" not in registry.names("envs"):
        pytest.skip("the clevr-robot environment plugin is not installed")
    from kalm_bench.plan import build_plan
    from kalm_bench.suite import load_suite

    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.replace("REFERENCE", str(REFERENCE)))

    def train_keys(*overrides):
        plan = build_plan(load_suite(suite, ["algorithms+={name: discrete-bc, label: BC}", *overrides]), registry)
        return {s.label: s.key for s in plan.stages.values() if s.kind == "train"}

    before, after = train_keys(), train_keys("train.steps=20")
    assert before["LLM seed 0"] == after["LLM seed 0"]
    assert before["BC seed 0"] != after["BC seed 0"]


@pytest.mark.slow
def test_suite_with_llm_policy_runs_end_to_end(registry, tmp_path):
    if "clevr-robot" not in registry.names("envs"):
        pytest.skip("the clevr-robot environment plugin is not installed")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.replace("REFERENCE", str(REFERENCE)))
    env = {"KALM_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "KALM_BENCH_PLUGIN_MODULES": os.environ.get("KALM_BENCH_PLUGIN_MODULES", "")}
    run_cli("validate", str(suite), env=env, check=True)
    out = tmp_path / "results"
    run_cli("run", str(suite), "-o", str(out), env=env, check=True)
    from kalm_bench.records import load_records

    records = load_records(out)
    assert len(records) == 2 and {r["level"] for r in records} == {"seen", "hard"}, records
    for r in records:
        assert r["status"] == "ok" and r["algorithm"] == "LLM" and r["algorithm_name"] == "llm-policy"
        assert r["llm_backend"] == "embedded" and "grounding" in r["data_keys"]
        assert [c["step"] for c in r["curve"]] == [0] and r["n_eval_episodes"] == 10
        assert 0.0 <= r["success_rate"] <= 1.0
    report = run_cli("report", str(out), env=env, check=True)
    print(report.stdout)
    row = [line for line in report.stdout.splitlines() if "LLM" in line]
    assert row and "0.9" in row[0], report.stdout  # the paper's Fig. 5 hard-level figure sits beside ours


@pytest.mark.parametrize("cached", [True, False])
def test_llm_policy_bench_step(benchmark, embedded, clevr, cached):
    """One evaluator step (64 episodes at t=30): KV-cache extension vs recomputing the whole history.

    ``OMP_NUM_THREADS=1 pytest tests/baselines/test_llm_policy.py -k bench --benchmark-enable``
    """
    backend, wd = embedded
    env, ds = clevr
    policy = backend.policy(wd, env)
    policy.kv_cache = cached
    rng = np.random.default_rng(0)
    n, t = 64, 30
    states = ds.states[rng.integers(0, len(ds.states), (n, t + 1))]
    actions = rng.integers(0, ds.action_size, (n, t))
    insts = [str(ds.instructions[i % ds.n_episodes]) for i in range(n)]
    policy.act(_batch(insts, list(states[:, :t]), list(actions[:, :t - 1])))  # leaves the cache at t-1
    saved = (policy._cache, policy._rows)

    def restore():
        policy._cache, policy._rows = saved

    step = _batch(insts, list(states), list(actions))
    out = benchmark.pedantic(policy.act, args=(step,), setup=restore, rounds=5)
    assert out.shape == (n,) and (policy.cached_calls > 0) == cached
