"""Training loop, checkpoints and policies for the d3rlpy-backed algorithms.

The loop is d3rlpy's own ``fit`` minus its per-transition Python sampler: the d3rlpy algorithm is built with
``create_impl`` and each step feeds ``impl.update`` a ``TorchMiniBatch`` exactly as
``QLearningAlgoBase.update`` would (same fields, same scalers, same grad-step counter), but gathered by
:class:`.sampler.TransitionSampler` directly as tensors.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import d3rlpy
import numpy as np
import torch
from d3rlpy.base import LearnableConfigWithShape
from d3rlpy.torch_utility import TorchMiniBatch, map_location

from kalm_bench.api import Policy, PolicyBatch, TrainContext, TransitionData
from kalm_bench.api import UserError

from kalm_bench_plugins.d3rlpy_layer import (
    META_FILE,
    build_d3rlpy_config,
    check_d3rlpy_config,
    check_train_inputs,
    continue_training,
    end_training_state,
    impl_counters,
    module_states,
    policy_device,
    read_policy_meta,
    save_training_state,
    seed_everything,
    split_batch,
    write_policy_files,
)

from .sampler import TorchTransitionBatch, TransitionSampler, episode_last_rows

if TYPE_CHECKING:  # pragma: no cover
    from d3rlpy.algos.qlearning.base import QLearningAlgoBase

    from .algorithms import D3rlpyAlgorithm, D3rlpyConfig

WEIGHTS_FILE = "modules.pt"
FORMAT = "kalm-bench-d3rlpy-policy"
LOG = logging.getLogger("kalm_bench")


# -------------------------------------------------------------------------------------------------------
# d3rlpy configs


def build_algo(cfg: D3rlpyConfig) -> QLearningAlgoBase:
    return build_d3rlpy_config(cfg).create(device=cfg.device)


# -------------------------------------------------------------------------------------------------------
# One gradient step


def to_torch_minibatch(algo: QLearningAlgoBase, batch: TorchTransitionBatch) -> TorchMiniBatch:
    """What ``TorchMiniBatch.from_batch`` makes of the equivalent numpy ``TransitionMiniBatch``."""
    c = algo.config
    obs, next_obs = batch.observations, batch.next_observations
    actions, next_actions, rewards = batch.actions, batch.next_actions, batch.rewards
    if c.observation_scaler:
        obs = c.observation_scaler.transform(obs)
        next_obs = c.observation_scaler.transform(next_obs)
    if c.action_scaler:
        actions = c.action_scaler.transform(actions)
        next_actions = c.action_scaler.transform(next_actions)
    if c.reward_scaler:
        rewards = c.reward_scaler.transform(rewards)
    return TorchMiniBatch(observations=obs, actions=actions, rewards=rewards, next_observations=next_obs,
                          next_actions=next_actions, returns_to_go=torch.zeros_like(rewards),
                          terminals=batch.terminals, intervals=batch.intervals, device=algo.impl.device)


def update(algo: QLearningAlgoBase, batch: TorchTransitionBatch) -> dict[str, float]:
    """``algo.update(batch)`` for a batch that is already a set of tensors."""
    loss = algo.impl.update(to_torch_minibatch(algo, batch), algo.grad_step)
    algo.set_grad_step(algo.grad_step + 1)
    return loss


# -------------------------------------------------------------------------------------------------------
# Policies


class D3rlpyPolicy(Policy):
    """Greedy (discrete) or deterministic (continuous) actions of a d3rlpy algorithm, one batched forward.

    Holds the serialised d3rlpy config and the network weights; the d3rlpy algorithm is only rebuilt
    when the policy first acts, so taking a checkpoint during training costs a copy of the weights.
    """

    def __init__(self, config_json: str, states: dict[str, dict[str, torch.Tensor]], action_kind: str,
                 meta: dict[str, Any], device: str = "cpu:0"):
        self.config_json = config_json
        self.states = states
        self.action_kind = action_kind
        self.meta = meta
        self.device = device
        self._algo: QLearningAlgoBase | None = None

    @property
    def observation_dim(self) -> int:
        return int(self.meta["observation_dim"])

    @property
    def algo(self) -> QLearningAlgoBase:
        if self._algo is None:
            full = LearnableConfigWithShape.deserialize(self.config_json)
            algo = full.config.create(device=self.device)
            algo.create_impl(tuple(full.observation_shape), full.action_size)
            for k, m in algo.impl.modules.get_torch_modules().items():
                m.load_state_dict(self.states[k])
            self._algo = algo
        return self._algo

    def act(self, batch: PolicyBatch) -> np.ndarray:
        obs = batch.observations
        if obs.ndim != 2 or obs.shape[1] != self.observation_dim:
            raise ValueError(f"policy expects observations of size {self.observation_dim} (state "
                             f"{self.meta['state_dim']} + embedding {self.meta['embedding_dim']}), got "
                             f"{obs.shape[1:]}; was the same text encoder used for training and evaluation?")
        actions = self.algo.predict(np.ascontiguousarray(obs, np.float32))
        if self.action_kind == "discrete":
            return np.asarray(actions, np.int64).reshape(-1)
        return np.asarray(actions, np.float32).reshape(len(obs), -1)

    def save(self, path: Path) -> None:
        write_policy_files(Path(path), self.states, self.meta, self.config_json, FORMAT, WEIGHTS_FILE)


def load_policy(path: Path, device: str | None = None) -> D3rlpyPolicy:
    """Load a policy directory written by :meth:`D3rlpyPolicy.save` (no pickle: JSON + torch weights)."""
    path = Path(path)
    mpath, wpath = path / META_FILE, path / WEIGHTS_FILE
    meta = read_policy_meta(mpath, FORMAT, "d3rlpy policy", required=("d3rlpy_config", "action_kind"))
    device = policy_device(meta, device)
    if not wpath.is_file():
        raise UserError("policy weights are missing", file=wpath)
    config_json = json.dumps(meta["d3rlpy_config"])
    policy = D3rlpyPolicy(config_json, {}, meta["action_kind"], meta, device)
    check_d3rlpy_config(config_json, mpath, device)
    try:
        policy.states = torch.load(wpath, map_location=map_location(device), weights_only=True)
        policy.algo  # noqa: B018 - build now, so a weight/shape mismatch is reported here, naming the file
    except Exception as exc:  # truncated zip, missing keys, shape mismatch
        raise UserError(f"cannot load policy weights ({type(exc).__name__}: {exc})", file=wpath) from None
    return policy


def snapshot(algo: QLearningAlgoBase, config_json: str, action_kind: str, meta: dict[str, Any]) -> D3rlpyPolicy:
    """A policy frozen at the current weights, independent of further training."""
    states = {k: {n: t.detach().clone() for n, t in m.state_dict().items()}
              for k, m in algo.impl.modules.get_torch_modules().items()}
    return D3rlpyPolicy(config_json, states, action_kind, dict(meta), algo.impl.device)


# -------------------------------------------------------------------------------------------------------
# Training


def _picked_observation_chunks(parts: list[TransitionData], rows: int = 65536) -> Iterator[np.ndarray]:
    """The observations of the transitions d3rlpy's picker yields, ``rows`` at a time: every step but the
    last one of an episode that did not end in a terminal (d3rlpy has no next observation there)."""
    for d in parts:
        ends = episode_last_rows(d)
        keep = np.ones(len(d), bool)
        keep[ends[np.asarray(d.terminals)[ends] == 0]] = False
        index = np.flatnonzero(keep)
        states, iids = np.asarray(d.states), np.asarray(d.instruction_ids)
        embeddings = np.asarray(d.embeddings, np.float32)
        for lo in range(0, len(index), rows):
            at = index[lo:lo + rows]
            yield np.concatenate([np.asarray(states[at], np.float32), embeddings[iids[at]]], axis=1)


def _fit_observation_scaler(scaler: Any, parts: list[TransitionData]) -> None:
    """What ``fit_with_transition_picker`` computes (float64 sums over the same transitions), vectorised:
    d3rlpy's loop visits every transition in Python, seconds per 100k transitions."""
    if isinstance(scaler, d3rlpy.preprocessing.MinMaxObservationScaler):
        lows, highs = zip(*((c.min(axis=0), c.max(axis=0)) for c in _picked_observation_chunks(parts)))
        scaler.minimum = np.min(lows, axis=0).astype(np.float64)
        scaler.maximum = np.max(highs, axis=0).astype(np.float64)
        return
    count = 0
    total = None
    for chunk in _picked_observation_chunks(parts):
        part = chunk.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
        count += len(chunk)
    mean = total / count
    sqsum = sum(((chunk - mean) ** 2).sum(axis=0) for chunk in _picked_observation_chunks(parts))
    scaler.mean, scaler.std = mean, np.sqrt(sqsum / count)


def _fit_scalers(algo: QLearningAlgoBase, data: list[TransitionData], action_kind: str) -> None:
    """Fit configured d3rlpy scalers on the training transitions, as ``fit`` does (only when asked for)."""
    c = algo.config
    if not (c.observation_scaler or c.action_scaler or c.reward_scaler):
        return
    parts = [d for d in data if d is not None and len(d)]
    direct = (d3rlpy.preprocessing.StandardObservationScaler, d3rlpy.preprocessing.MinMaxObservationScaler)
    if c.action_scaler is None and c.reward_scaler is None and type(c.observation_scaler) in direct:
        _fit_observation_scaler(c.observation_scaler, parts)
        return
    from d3rlpy.algos.utility import build_scalers_with_transition_picker

    obs = np.concatenate([d.observations for d in parts]).astype(np.float32)
    actions = np.concatenate([np.asarray(d.actions) for d in parts])
    rewards = np.concatenate([d.rewards for d in parts]).astype(np.float32)
    terminals = np.concatenate([d.terminals for d in parts]).astype(np.float32)
    timeouts = np.concatenate([d.timeouts for d in parts]).astype(np.float32)
    offset = 0
    for d in parts:  # every episode must end with a flag for d3rlpy to split episodes the same way
        ends = offset + episode_last_rows(d)
        unflagged = ends[(terminals[ends] == 0) & (timeouts[ends] == 0)]
        timeouts[unflagged] = 1.0
        offset += len(d)
    kind = d3rlpy.ActionSpace.DISCRETE if action_kind == "discrete" else d3rlpy.ActionSpace.CONTINUOUS
    dataset = d3rlpy.dataset.MDPDataset(observations=obs, actions=actions, rewards=rewards,
                                        terminals=terminals, timeouts=timeouts, action_space=kind)
    build_scalers_with_transition_picker(algo, dataset)


def train(algorithm: D3rlpyAlgorithm, ctx: TrainContext) -> None:
    cfg: D3rlpyConfig = algorithm.config  # type: ignore[assignment]
    check_train_inputs(algorithm, ctx)
    seed_everything(ctx.seed)
    imaginary = ctx.imaginary if ctx.imaginary is not None and len(ctx.imaginary) else None
    n_real, n_imag = split_batch(cfg.batch_size, ctx.imaginary_fraction, imaginary is not None)
    sources = [(ctx.real, n_real)] + ([(imaginary, n_imag)] if imaginary is not None else [])
    device = cfg.device
    try:
        sampler = TransitionSampler(sources, ctx.action_kind, seed=ctx.seed, device=device,
                                    gamma_one_bug=cfg.official_gamma_bug,
                                    timeouts_as_terminals=cfg.timeouts_as_terminals)
    except ValueError as exc:
        raise UserError(str(exc), field="data") from None

    algo = build_algo(cfg)
    _fit_scalers(algo, [ctx.real, imaginary], ctx.action_kind)
    algo.create_impl((sampler.observation_dim,), ctx.action_size)
    config_json = LearnableConfigWithShape(observation_shape=algo.impl.observation_shape,
                                           action_size=algo.impl.action_size, config=algo.config).serialize()

    meta = {"algorithm": algorithm.name, "algorithm_version": algorithm.version,
            "action_kind": ctx.action_kind, "action_size": int(ctx.action_size),
            "state_dim": int(sampler.state_dim), "embedding_dim": int(sampler.observation_dim - sampler.state_dim),
            "observation_dim": int(sampler.observation_dim), "device": device, "seed": int(ctx.seed),
            "batch": {"real": n_real, "imaginary": n_imag}}
    checkpoints = set(ctx.checkpoint_steps())
    every = max(1, min(100, ctx.steps // 100 or 1))
    first, losses = continue_training(algorithm, ctx, algo, sampler, device)  # after a kill, if any
    for step in range(first, ctx.steps + 1):
        loss = update(algo, sampler.sample())
        for k, v in loss.items():
            losses.setdefault(k, deque(maxlen=1000)).append(float(v))
        if step in checkpoints:
            meta["step"] = step
            meta["loss"] = {k: float(np.mean(v)) for k, v in losses.items()}
            ctx.log(step, meta["loss"])  # mean of the last 1000 updates, into the run's record
            ctx.save_checkpoint(step, snapshot(algo, config_json, ctx.action_kind, meta))
            save_training_state(algorithm, ctx, step, {
                "modules": module_states(algo), "grad_step": int(algo.grad_step), "counters": impl_counters(algo),
                "sampler_rng": sampler.rng.bit_generator.state, "losses": {k: list(v) for k, v in losses.items()}})
        if step % every == 0 or step == ctx.steps:
            ctx.progress(step, ctx.steps)
    end_training_state(ctx)
