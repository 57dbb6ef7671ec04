"""Vectorised uniform transition sampler over :class:`kalm_bench.api.TransitionData`.

d3rlpy's ``ReplayBuffer.sample_transition_batch`` builds every mini-batch from Python ``Transition`` objects,
one per sampled row; on these CPUs that costs about as much as the gradient update of a small MLP. Here the
data sit in torch tensors once, and a batch is a handful of ``index_select`` calls on indices drawn by a
seeded numpy generator. The rows are the same d3rlpy would produce from the same transitions
(``BasicTransitionPicker``): observation = state ⊕ instruction embedding, ``next_actions`` = the action of
the following step (zero at an episode's end), ``terminals`` from the data, an all-zero next observation
after a terminal step, ``intervals`` = 1. Unlike d3rlpy, the last step of an episode that ended by time-out
is kept (its next state is known), as a non-terminal transition.

Real and imaginary data are sampled in fixed proportions (``imaginary_fraction`` of every batch), which is
how the paper mixes them ("each batch has the same proportion of real and imaginary data").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kalm_bench.api import TransitionData


@dataclass
class TorchTransitionBatch:
    """One sampled mini-batch as float32 tensors, in d3rlpy's ``TransitionMiniBatch`` layout."""

    observations: torch.Tensor  # (B, S+E)
    actions: torch.Tensor  # (B, 1) discrete index as float, or (B, A)
    rewards: torch.Tensor  # (B, 1)
    next_observations: torch.Tensor  # (B, S+E)
    next_actions: torch.Tensor  # (B, 1) or (B, A)
    terminals: torch.Tensor  # (B, 1)
    intervals: torch.Tensor  # (B, 1)

    def __len__(self) -> int:
        return int(self.observations.shape[0])


def episode_last_rows(data: TransitionData) -> np.ndarray:
    """The row of every non-empty episode's last step."""
    starts = np.asarray(data.episode_starts, np.int64)
    ends = np.append(starts[1:], len(data)) - 1
    return ends[ends >= starts]


def _next_actions(data: TransitionData, actions: np.ndarray) -> np.ndarray:
    """The action taken at the step after each transition; zero at each episode's last step."""
    n = len(data)
    out = np.zeros_like(actions)
    if n == 0:
        return out
    last = np.zeros(n, bool)
    last[episode_last_rows(data)] = True
    last[-1] = True
    inner = np.flatnonzero(~last)
    out[inner] = actions[inner + 1]
    return out


def _check(data: TransitionData, what: str) -> None:
    n = len(data)
    for name in ("actions", "rewards", "next_states", "terminals", "timeouts", "instruction_ids"):
        if len(getattr(data, name)) != n:
            raise ValueError(f"{what} data: {name} has {len(getattr(data, name))} rows, states has {n}")
    if n and (data.instruction_ids.min() < 0 or data.instruction_ids.max() >= len(data.embeddings)):
        raise ValueError(f"{what} data: instruction_ids point outside the embedding table "
                         f"({len(data.embeddings)} rows)")
    if np.any((data.terminals > 0) & (data.timeouts > 0)):
        raise ValueError(f"{what} data: a transition is marked both terminal and timeout")


class TransitionSampler:
    """Draws mini-batches with a fixed number of rows from each source, reproducibly per seed.

    ``gamma_one_bug`` reproduces the official KALM code, which passes ``intervals = terminals`` so every
    non-terminal target uses γ^0 = 1. ``timeouts_as_terminals`` reproduces its other simplification: every
    episode end, time-outs included, is stored as terminal (no bootstrapping after a truncation).
    """

    def __init__(self, sources: list[tuple[TransitionData, int]], action_kind: str, seed: int,
                 device: str = "cpu", gamma_one_bug: bool = False, timeouts_as_terminals: bool = False):
        labelled = [("real" if i == 0 else "imaginary", d, int(k))
                    for i, (d, k) in enumerate(sources) if int(k) > 0]
        if not labelled:
            raise ValueError("no data to sample from")
        self.batch_size = sum(k for _, _, k in labelled)
        self.gamma_one_bug = gamma_one_bug
        self.device = torch.device(device)
        self.rng = np.random.default_rng(seed)

        states, next_states, embs, iids, acts, nacts, rews, terms = [], [], [], [], [], [], [], []
        self._ranges: list[tuple[int, int, int]] = []  # (offset, size, rows per batch)
        offset = emb_offset = 0
        for what, data, k in labelled:
            _check(data, what)
            n = len(data)
            if n == 0:
                raise ValueError(f"{what} data is empty but {k} rows of every batch should come from it")
            if action_kind == "discrete":
                a = np.asarray(data.actions, np.int64).reshape(n, 1).astype(np.float32)
            else:
                a = np.asarray(data.actions, np.float32).reshape(n, -1)
            term = np.asarray(data.terminals, np.float32).copy()
            if timeouts_as_terminals:
                term = np.maximum(term, np.asarray(data.timeouts, np.float32))
            states.append(np.asarray(data.states, np.float32))
            next_states.append(np.asarray(data.next_states, np.float32))
            embs.append(np.asarray(data.embeddings, np.float32))
            iids.append(np.asarray(data.instruction_ids, np.int64) + emb_offset)
            acts.append(a)
            nacts.append(_next_actions(data, a))
            rews.append(np.asarray(data.rewards, np.float32).reshape(n, 1))
            terms.append(term.reshape(n, 1))
            self._ranges.append((offset, n, k))
            offset += n
            emb_offset += len(data.embeddings)
        widths = {e.shape[1] for e in embs}
        if len(widths) != 1 or len({s.shape[1] for s in states}) != 1:
            raise ValueError("real and imaginary data have different state or embedding sizes")

        def t(parts: list[np.ndarray], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            # one source: share the caller's arrays instead of copying them (they are only read)
            whole = parts[0] if len(parts) == 1 else np.concatenate(parts)
            return torch.from_numpy(np.ascontiguousarray(whole)).to(self.device, dtype)

        self.states = t(states)
        self.next_states = t(next_states)
        self.embeddings = t(embs)
        self.instruction_ids = t(iids, torch.long)
        self.actions = t(acts)
        self.next_actions = t(nacts)
        self.rewards = t(rews)
        self.terminals = t(terms)
        self.state_dim = self.states.shape[1]
        self.observation_dim = self.state_dim + self.embeddings.shape[1]

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def sample_indices(self) -> np.ndarray:
        parts = [off + self.rng.integers(0, n, size=k) for off, n, k in self._ranges]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def gather(self, index: np.ndarray) -> TorchTransitionBatch:
        idx = torch.from_numpy(np.asarray(index, np.int64)).to(self.device)
        emb = self.embeddings.index_select(0, self.instruction_ids.index_select(0, idx))
        terminals = self.terminals.index_select(0, idx)
        # d3rlpy gives a terminal transition an all-zero next observation; CQL's conservative term samples
        # the policy there, so the zeros are kept for identical results.
        next_obs = torch.cat([self.next_states.index_select(0, idx), emb], dim=1)
        next_obs.mul_(1.0 - terminals)
        return TorchTransitionBatch(
            observations=torch.cat([self.states.index_select(0, idx), emb], dim=1),
            actions=self.actions.index_select(0, idx),
            rewards=self.rewards.index_select(0, idx),
            next_observations=next_obs,
            next_actions=self.next_actions.index_select(0, idx),
            terminals=terminals,
            intervals=terminals.clone() if self.gamma_one_bug else torch.ones_like(terminals),
        )

    def sample(self) -> TorchTransitionBatch:
        return self.gather(self.sample_indices())
