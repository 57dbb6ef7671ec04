"""Batched evaluation of a policy on an environment's test cases.

Episodes run in lockstep: one ``policy.act`` call per step for every unfinished episode, so a neural
policy pays one forward pass per step instead of one per episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .api import EvalResult, PolicyBatch, Progress, _no_progress

if TYPE_CHECKING:  # pragma: no cover
    from .api import Environment, Policy


def evaluate_batched(env_plugin: Environment, policy: Policy, level: str, cases: Sequence[dict[str, Any]],
                     seed: int, embed: Callable[[list[str]], np.ndarray] | None = None,
                     progress: Progress = _no_progress, batch_size: int = 128) -> EvalResult:
    n = len(cases)
    success = np.zeros(n, bool)
    returns = np.zeros(n, np.float64)
    lengths = np.zeros(n, np.int64)
    if n == 0:
        return EvalResult(success, returns, lengths)
    width = max(1, min(batch_size, n))
    envs = [env_plugin.make(level) for _ in range(width)]
    horizon = int(getattr(env_plugin, "horizon", 1_000))
    try:
        for start in range(0, n, width):
            idx = list(range(start, min(n, start + width)))
            states, instr = [], []
            for slot, i in enumerate(idx):
                obs, _ = envs[slot].reset(seed=seed + i, options=dict(cases[i]))
                states.append(np.asarray(obs, np.float32))
                instr.append(str(cases[i]["instruction"]))
            emb = embed(instr) if embed is not None else None
            init = np.stack(states)
            # Histories live in preallocated arrays; policies get views, so a step costs O(batch), not O(t).
            hist_s = np.zeros((len(idx), horizon + 1) + init.shape[1:], np.float32)
            hist_s[:, 0] = init
            hist_r = np.zeros((len(idx), horizon), np.float32)
            hist_a: np.ndarray | None = None
            active = list(range(len(idx)))
            t = 0
            while active and t < horizon:
                batch = PolicyBatch(
                    states=hist_s[active, t],
                    instructions=[instr[j] for j in active],
                    embeddings=None if emb is None else emb[active],
                    t=np.full(len(active), t, np.int64),
                    initial_states=init[active],
                    history_states=[hist_s[j, : t + 1] for j in active],
                    history_actions=[hist_a[j, :t] if hist_a is not None else np.zeros((0,)) for j in active],
                    history_rewards=[hist_r[j, :t] for j in active],
                )
                actions = np.asarray(policy.act(batch))
                if hist_a is None:
                    hist_a = np.zeros((len(idx), horizon) + actions.shape[1:], actions.dtype)
                still = []
                for k, j in enumerate(active):
                    a = actions[k]
                    obs, reward, terminated, truncated, info = envs[j].step(a.item() if a.ndim == 0 else a)
                    i = idx[j]
                    returns[i] += float(reward)
                    lengths[i] += 1
                    hist_s[j, t + 1] = np.asarray(obs, np.float32)
                    hist_a[j, t] = a
                    hist_r[j, t] = float(reward)
                    if info.get("is_success", False):
                        success[i] = True
                    if not (terminated or truncated):
                        still.append(j)
                active = still
                t += 1
            progress(idx[-1] + 1, n)
    finally:
        for env in envs:
            env.close()
    return EvalResult(success=success, returns=returns, lengths=lengths)
