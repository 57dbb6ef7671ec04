"""Training loop, trajectory sampler, policies and checkpoints of the Decision Transformers.

The d3rlpy algorithm is built with ``create_impl`` and each step feeds ``impl.update`` a
``TorchTrajectoryMiniBatch`` laid out exactly as d3rlpy's ``BasicTrajectorySlicer`` would make it (front
padding, ``masks`` 1 on real steps, 1-based ``timesteps`` with 0 on padding, return-to-go = sum of the
episode's rewards from that step on), but gathered by :class:`TrajectorySampler` directly as tensors:
d3rlpy's ``sample_trajectory_batch`` slices one Python episode object per row.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from d3rlpy.base import LearnableConfigWithShape
from d3rlpy.torch_utility import TorchTrajectoryMiniBatch, map_location

from kalm_bench.api import Policy, PolicyBatch, TrainContext, TransitionData
from kalm_bench.api import UserError
from kalm_bench_plugins.d3rlpy_layer import (
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

if TYPE_CHECKING:  # pragma: no cover
    from .dt import DTAlgorithm, DTConfig

META_FILE = "policy.json"
WEIGHTS_FILE = "transformer.pt"
FORMAT = "kalm-bench-dt-policy"

__all__ = ["build_d3rlpy_config", "build_algo", "TrajectorySampler", "DTPolicy", "load_policy", "train",
           "episode_returns"]


def build_algo(cfg: DTConfig) -> Any:
    return build_d3rlpy_config(cfg).create(device=cfg.device)


# -------------------------------------------------------------------------------------------------------
# Data


def _episode_bounds(data: TransitionData) -> tuple[np.ndarray, np.ndarray]:
    starts = np.asarray(data.episode_starts, np.int64)
    ends = np.append(starts[1:], len(data))
    keep = ends > starts  # an empty episode has no rows to sample
    return starts[keep], ends[keep]


def episode_returns(data: TransitionData) -> np.ndarray:
    """Undiscounted return of every (non-empty) episode."""
    starts, _ = _episode_bounds(data)
    if not len(starts):
        return np.zeros(0, np.float64)
    return np.add.reduceat(np.asarray(data.rewards, np.float64), starts)


def _check(data: TransitionData, what: str) -> None:
    n = len(data)
    for name in ("actions", "rewards", "instruction_ids"):
        if len(getattr(data, name)) != n:
            raise ValueError(f"{what} data: {name} has {len(getattr(data, name))} rows, states has {n}")
    if n and (data.instruction_ids.min() < 0 or data.instruction_ids.max() >= len(data.embeddings)):
        raise ValueError(f"{what} data: instruction_ids point outside the embedding table "
                         f"({len(data.embeddings)} rows)")
    starts = np.asarray(data.episode_starts, np.int64)
    if n and (len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) < 0) or starts[-1] > n):
        raise ValueError(f"{what} data: episode_starts must begin at 0 and increase within the data")


class TrajectorySampler:
    """Mini-batches of sub-trajectories of length K, a fixed number from each source, reproducible per seed.

    Each row ends at a transition drawn uniformly from its source (as d3rlpy's ``sample_trajectory``
    does) and holds the K steps up to it, front-padded with zeros where the episode is shorter.
    """

    def __init__(self, sources: list[tuple[TransitionData, int]], action_kind: str, context_size: int,
                 seed: int, device: str = "cpu", return_scale: float = 1.0, max_timestep: int | None = None):
        labelled = [("real" if i == 0 else "imaginary", d, int(k))
                    for i, (d, k) in enumerate(sources) if int(k) > 0]
        if not labelled:
            raise ValueError("no data to sample from")
        self.context_size = int(context_size)
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)
        self.return_scale = float(return_scale)

        states, embs, iids, acts, rtgs, tsteps, first, terms = [], [], [], [], [], [], [], []
        self._ranges: list[tuple[int, int, int]] = []
        offset = emb_offset = 0
        for what, data, k in labelled:
            _check(data, what)
            n = len(data)
            if n == 0:
                raise ValueError(f"{what} data is empty but {k} rows of every batch should come from it")
            starts, ends = _episode_bounds(data)
            lengths = ends - starts
            start_of_row = np.repeat(starts, lengths)
            pos = np.arange(n) - start_of_row
            if max_timestep is not None and pos.max() + 1 >= max_timestep:
                raise ValueError(f"{what} data: an episode has {pos.max() + 1} steps, max_timestep is "
                                 f"{max_timestep}; raise max_timestep")
            rew = np.asarray(data.rewards, np.float64)
            csum = np.cumsum(rew)
            last_of_row = np.repeat(ends - 1, lengths)
            # return-to-go includes the current step's reward, as d3rlpy's BasicTrajectorySlicer
            rtg = csum[last_of_row] - csum + rew
            term = np.zeros(n, np.float32)
            term[ends - 1] = np.asarray(data.terminals, np.float32)[ends - 1]
            if action_kind == "discrete":
                a = np.asarray(data.actions, np.int64).reshape(n, 1).astype(np.float32)
            else:
                a = np.asarray(data.actions, np.float32).reshape(n, -1)
            states.append(np.asarray(data.states, np.float32))
            embs.append(np.asarray(data.embeddings, np.float32))
            iids.append(np.asarray(data.instruction_ids, np.int64) + emb_offset)
            acts.append(a)
            rtgs.append((rtg / self.return_scale).astype(np.float32).reshape(n, 1))
            tsteps.append(pos + 1)
            first.append(start_of_row + offset)
            terms.append(term.reshape(n, 1))
            self._ranges.append((offset, n, k))
            offset += n
            emb_offset += len(data.embeddings)
        if len({e.shape[1] for e in embs}) != 1 or len({s.shape[1] for s in states}) != 1:
            raise ValueError("real and imaginary data have different state or embedding sizes")

        def t(parts: list[np.ndarray], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
            return torch.from_numpy(np.ascontiguousarray(whole)).to(self.device, dtype)

        self.states = t(states)
        self.embeddings = t(embs)
        self.instruction_ids = t(iids, torch.long)
        self.actions = t(acts)
        self.returns_to_go = t(rtgs)
        self.timesteps = t(tsteps, torch.long)
        self.terminals = t(terms)
        self._first = np.concatenate(first)
        self.batch_size = sum(k for _, _, k in labelled)
        self.state_dim = self.states.shape[1]
        self.observation_dim = self.state_dim + self.embeddings.shape[1]
        self._window = np.arange(self.context_size) - (self.context_size - 1)

    def sample_ends(self) -> np.ndarray:
        parts = [off + self.rng.integers(0, n, size=k) for off, n, k in self._ranges]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def gather(self, ends: np.ndarray) -> TorchTrajectoryMiniBatch:
        ends = np.asarray(ends, np.int64)
        idx = ends[:, None] + self._window[None, :]
        valid = idx >= self._first[ends][:, None]
        idx = np.where(valid, idx, ends[:, None])  # any in-episode row; zeroed below
        b, k = idx.shape
        flat = torch.from_numpy(idx.reshape(-1)).to(self.device)
        m = torch.from_numpy(valid.astype(np.float32)).to(self.device)
        m3 = m.unsqueeze(-1)
        emb = self.embeddings.index_select(0, self.instruction_ids.index_select(0, flat))
        obs = torch.cat([self.states.index_select(0, flat), emb], dim=1).view(b, k, -1) * m3
        rtg = self.returns_to_go.index_select(0, flat).view(b, k, 1) * m3
        return TorchTrajectoryMiniBatch(
            observations=obs,
            actions=self.actions.index_select(0, flat).view(b, k, -1) * m3,
            rewards=torch.zeros_like(rtg),  # unused by DT's loss
            returns_to_go=rtg,
            terminals=self.terminals.index_select(0, flat).view(b, k, 1) * m3,
            timesteps=self.timesteps.index_select(0, flat).view(b, k) * m.long(),
            masks=m,
            device=str(self.device),
        )

    def sample(self) -> TorchTrajectoryMiniBatch:
        return self.gather(self.sample_ends())


# -------------------------------------------------------------------------------------------------------
# Policies


class DTPolicy(Policy):
    """Return-conditioned actions from the last K steps of every episode, one batched forward per call.

    ``act`` rebuilds each episode's window from the evaluator's histories: observations (state ⊕ the
    episode's embedding), past actions, return-to-go = target − reward collected so far, and timesteps;
    windows shorter than K are front-padded and masked, as in training. Discrete actions are greedy.
    """

    def __init__(self, config_json: str, state: dict[str, torch.Tensor], meta: dict[str, Any],
                 device: str = "cpu:0"):
        self.config_json = config_json
        self.state = state
        self.meta = meta
        self.device = device
        self._net: torch.nn.Module | None = None

    @property
    def context_size(self) -> int:
        return int(self.meta["context_size"])

    @property
    def net(self) -> torch.nn.Module:
        if self._net is None:
            full = LearnableConfigWithShape.deserialize(self.config_json)
            algo = full.config.create(device=self.device)
            algo.create_impl(tuple(full.observation_shape), full.action_size)
            net = algo.impl.modules.transformer
            net.load_state_dict(self.state)
            net.eval()
            self._net = net
        return self._net

    def _windows(self, batch: PolicyBatch) -> tuple[np.ndarray, ...]:
        meta = self.meta
        k_max, n = self.context_size, len(batch.states)
        s_dim, e_dim = int(meta["state_dim"]), int(meta["embedding_dim"])
        discrete = meta["action_kind"] == "discrete"
        a_dim = 1 if discrete else int(meta["action_size"])
        emb = batch.embeddings
        if (e_dim and (emb is None or emb.shape[1] != e_dim)) or (not e_dim and emb is not None and emb.size):
            got = 0 if emb is None else emb.shape[1]
            raise ValueError(f"policy expects instruction embeddings of size {e_dim}, got {got}; was the same "
                             f"text encoder used for training and evaluation?")
        if batch.states.shape[1] != s_dim:
            raise ValueError(f"policy expects states of size {s_dim}, got {batch.states.shape[1]}")
        obs = np.zeros((n, k_max, s_dim + e_dim), np.float32)
        act = np.zeros((n, k_max, a_dim), np.float32)
        rtg = np.zeros((n, k_max, 1), np.float32)
        ts = np.zeros((n, k_max), np.int64)
        mask = np.zeros((n, k_max), np.float32)
        target, scale = float(meta["target_return"]), float(meta["return_scale"])
        top = int(meta["max_timestep"]) - 1
        has_hist = len(batch.history_states) == n
        for i in range(n):
            if has_hist and len(batch.history_states[i]):
                hs = np.asarray(batch.history_states[i])
                t = len(hs) - 1
                ha = np.asarray(batch.history_actions[i]) if len(batch.history_actions) == n else np.zeros(0)
                hr = np.asarray(batch.history_rewards[i], np.float64) if len(batch.history_rewards) == n \
                    else np.zeros(0)
            else:  # no history given: condition on the current state alone
                hs, t = batch.states[i : i + 1], int(batch.t[i])
                ha, hr = np.zeros(0), np.zeros(0)
            length = min(k_max, len(hs))
            lo = t - length + 1  # first step in the window
            sl = slice(k_max - length, k_max)
            obs[i, sl, :s_dim] = hs[-length:]
            if e_dim:
                obs[i, sl, s_dim:] = emb[i]
            done = np.concatenate([[0.0], np.cumsum(hr)])  # reward collected before each step
            steps = np.arange(lo, t + 1)
            collected = done[np.clip(steps, 0, len(done) - 1)] if len(hr) else np.zeros(length)
            rtg[i, sl, 0] = (target - collected) / scale
            past = ha[max(lo, 0) : t] if len(ha) else ha
            if len(past):
                act[i, k_max - length : k_max - 1] = np.asarray(past, np.float32).reshape(len(past), a_dim)
            ts[i, sl] = np.minimum(steps + 1, top)
            mask[i, sl] = 1.0
        return obs, act, rtg, ts, mask

    def act(self, batch: PolicyBatch) -> np.ndarray:
        obs, act, rtg, ts, mask = self._windows(batch)
        dev = torch.device(self.device)
        net = self.net
        with torch.no_grad():
            out = net(torch.from_numpy(obs).to(dev), torch.from_numpy(act).to(dev),
                      torch.from_numpy(rtg).to(dev), torch.from_numpy(ts).to(dev),
                      1.0 - torch.from_numpy(mask).to(dev))
        if self.meta["action_kind"] == "discrete":
            return out[1][:, -1].argmax(dim=-1).cpu().numpy().astype(np.int64)
        return out[:, -1].cpu().numpy().astype(np.float32)

    def save(self, path: Path) -> None:
        write_policy_files(Path(path), self.state, self.meta, self.config_json, FORMAT, WEIGHTS_FILE)


_META_KEYS = ("action_kind", "action_size", "state_dim", "embedding_dim", "context_size", "target_return",
              "return_scale", "max_timestep", "d3rlpy_config")


def load_policy(path: Path, device: str | None = None) -> DTPolicy:
    """Load a policy directory written by :meth:`DTPolicy.save` (no pickle: JSON + torch weights)."""
    path = Path(path)
    mpath, wpath = path / META_FILE, path / WEIGHTS_FILE
    meta = read_policy_meta(mpath, FORMAT, "Decision Transformer policy", required=_META_KEYS)
    device = policy_device(meta, device)
    config_json = json.dumps(meta["d3rlpy_config"])
    check_d3rlpy_config(config_json, mpath, device)
    if not wpath.is_file():
        raise UserError("policy weights are missing", file=wpath)
    policy = DTPolicy(config_json, {}, meta, device)
    try:
        policy.state = torch.load(wpath, map_location=map_location(device), weights_only=True)
        policy.net  # noqa: B018 - build now, so a weight/shape mismatch is reported naming the file
    except Exception as exc:  # truncated zip, missing keys, shape mismatch
        raise UserError(f"cannot load policy weights ({type(exc).__name__}: {exc})", file=wpath) from None
    return policy


# -------------------------------------------------------------------------------------------------------
# Training


def trajectory_setup(cfg: Any, ctx: TrainContext, device: str
                     ) -> tuple[TrajectorySampler, float, float, tuple[int, int]]:
    """What every Decision Transformer trains from: the trajectory sampler over real (+ imaginary) data,
    the return-to-go target and scale (from the config, else from the real episodes' returns) and the
    real/imaginary split of each batch. Checks that the timestep table covers the env's horizon."""
    returns = episode_returns(ctx.real)
    target = float(cfg.target_return) if cfg.target_return is not None else float(returns.max())
    scale = float(cfg.return_scale) if cfg.return_scale is not None else \
        max(1.0, float(np.abs(returns).max()))
    imaginary = ctx.imaginary if ctx.imaginary is not None and len(ctx.imaginary) else None
    n_real, n_imag = split_batch(cfg.batch_size, ctx.imaginary_fraction, imaginary is not None)
    sources = [(ctx.real, n_real)] + ([(imaginary, n_imag)] if imaginary is not None else [])
    try:
        sampler = TrajectorySampler(sources, ctx.action_kind, cfg.context_size, seed=ctx.seed, device=device,
                                    return_scale=scale, max_timestep=cfg.max_timestep)
    except ValueError as exc:
        raise UserError(str(exc), field="data") from None
    if ctx.env is not None and getattr(ctx.env, "horizon", 0) >= cfg.max_timestep:
        raise UserError(f"max_timestep ({cfg.max_timestep}) must exceed the environment's horizon "
                        f"({ctx.env.horizon})", field="max_timestep")
    return sampler, target, scale, (n_real, n_imag)


def train(algorithm: DTAlgorithm, ctx: TrainContext) -> None:
    cfg: DTConfig = algorithm.config  # type: ignore[assignment]
    check_train_inputs(algorithm, ctx)
    seed_everything(ctx.seed)
    sampler, target, scale, (n_real, n_imag) = trajectory_setup(cfg, ctx, cfg.device)

    algo = build_algo(cfg)
    algo.create_impl((sampler.observation_dim,), ctx.action_size)
    config_json = LearnableConfigWithShape(observation_shape=algo.impl.observation_shape,
                                           action_size=algo.impl.action_size, config=algo.config).serialize()
    meta = {"algorithm": algorithm.name, "algorithm_version": algorithm.version,
            "action_kind": ctx.action_kind, "action_size": int(ctx.action_size),
            "state_dim": int(sampler.state_dim), "embedding_dim": int(sampler.observation_dim - sampler.state_dim),
            "observation_dim": int(sampler.observation_dim), "context_size": int(cfg.context_size),
            "max_timestep": int(cfg.max_timestep), "target_return": target, "return_scale": scale,
            "device": cfg.device, "seed": int(ctx.seed), "batch": {"real": n_real, "imaginary": n_imag}}
    net = algo.impl.modules.transformer
    checkpoints = set(ctx.checkpoint_steps())
    every = max(1, min(100, ctx.steps // 100 or 1))
    first, losses = continue_training(algorithm, ctx, algo, sampler, cfg.device)  # after a kill, if any
    for step in range(first, ctx.steps + 1):
        loss = algo.impl.update(sampler.sample(), algo.grad_step)
        algo.set_grad_step(algo.grad_step + 1)
        for k, v in loss.items():
            losses.setdefault(k, deque(maxlen=1000)).append(float(v))
        if step in checkpoints:
            meta["step"] = step
            meta["loss"] = {k: float(np.mean(v)) for k, v in losses.items()}
            state = {n: t.detach().clone() for n, t in net.state_dict().items()}
            ctx.save_checkpoint(step, DTPolicy(config_json, state, dict(meta), cfg.device))
            save_training_state(algorithm, ctx, step, {
                "modules": module_states(algo), "grad_step": int(algo.grad_step), "counters": impl_counters(algo),
                "sampler_rng": sampler.rng.bit_generator.state, "losses": {k: list(v) for k, v in losses.items()}})
        if step % every == 0 or step == ctx.steps:
            ctx.progress(step, ctx.steps)
    end_training_state(ctx)
