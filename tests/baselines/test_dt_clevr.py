"""Discrete DT learns CLEVR-Robot's language-conditioned task: env data → minilm → train → batched eval."""

from __future__ import annotations

import numpy as np
import pytest
from dt_helpers import make_ctx, to_transitions


class _Random:
    def __init__(self, n: int):
        self.rng = np.random.default_rng(0)
        self.n = n

    def act(self, batch):
        return self.rng.integers(0, self.n, len(batch.states))

    def save(self, path):  # pragma: no cover
        raise NotImplementedError


@pytest.mark.slow
def test_discrete_dt_beats_random_on_clevr_seen(registry, tmp_path):
    if "clevr-robot" not in registry.names("envs"):
        pytest.skip("the clevr-robot environment plugin is not installed")
    env = registry.get("envs", "clevr-robot")()
    encoder = registry.get("encoders", "minilm")()
    data = to_transitions(env.generate_dataset(300, seed=0), encoder.encode)
    cls = registry.get("algorithms", "discrete-dt")
    algo = cls()  # the cpu preset
    ctx, saved, _ = make_ctx(algo, data, tmp_path, steps=800, every=400, action_size=40, env=env)
    algo.train(ctx)
    cases = env.test_cases("seen", None, 7)
    dt = env.evaluate(algo.load_policy(saved[800], ctx), "seen", cases, 7, embed=encoder.encode).success_rate
    random = env.evaluate(_Random(40), "seen", cases, 7, embed=encoder.encode).success_rate
    # measured 0.64 (AVX-512) and 0.58 (AVX2 dispatch) vs random 0.35 on these 111 cases (2,000 episodes and
    # 3,000 steps reach 0.79): the bar, random + 0.1, leaves 0.13-0.19 for CPU-dependent training noise (the
    # two dispatches differ by 0.06), and a policy no better than random (SE 0.045) clears it ~1.5 % of the time
    assert dt > random + 0.1, (dt, random)
