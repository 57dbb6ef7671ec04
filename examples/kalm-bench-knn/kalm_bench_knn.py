"""Behaviour cloning by k nearest neighbours: a complete kalm-bench algorithm plugin."""
from pathlib import Path

import numpy as np

from kalm_bench import hookimpl
from kalm_bench.api import Algorithm, Policy, StrictConfig


class KNNPolicy(Policy):
    def __init__(self, obs, actions, k, discrete):
        self.obs, self.actions, self.k, self.discrete = obs, actions, k, discrete

    def act(self, batch):
        x = batch.observations
        dist = (x**2).sum(1)[:, None] - 2 * x @ self.obs.T + (self.obs**2).sum(1)[None]
        acts = self.actions[np.argsort(dist, axis=1, kind="stable")[:, : self.k]]  # ties: data order, on any CPU
        if self.discrete:
            return np.array([np.bincount(a).argmax() for a in acts])
        return acts.mean(axis=1)

    def save(self, path: Path):
        np.savez(path / "knn.npz", obs=self.obs, actions=self.actions, k=self.k, discrete=self.discrete)


class KNNBC(Algorithm):
    name = "knn-bc"
    version = "1"
    description = "behaviour cloning by k nearest neighbours (example plugin)"

    class Config(StrictConfig):
        k: int = 5
        max_points: int = 20_000

    def train(self, ctx):
        rng = np.random.default_rng(ctx.seed)
        parts = [(ctx.real, 1 - ctx.imaginary_fraction), (ctx.imaginary, ctx.imaginary_fraction)]
        obs, acts = [], []
        for data, share in parts:
            if data is not None and share > 0:
                idx = rng.permutation(len(data))[: int(self.config.max_points * share)]
                obs.append(data.observations[idx])
                acts.append(data.actions[idx])
        policy = KNNPolicy(np.concatenate(obs), np.concatenate(acts), self.config.k, ctx.action_kind == "discrete")
        for step in ctx.checkpoint_steps():
            ctx.save_checkpoint(step, policy)

    def load_policy(self, path, ctx):
        z = np.load(path / "knn.npz")
        return KNNPolicy(z["obs"], z["actions"], int(z["k"]), bool(z["discrete"]))


@hookimpl
def register_algorithms(register):
    register(KNNBC)
