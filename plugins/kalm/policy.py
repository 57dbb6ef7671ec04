"""The grounded LLM acting directly in the real environment (the paper's "LLM as policy" baseline).

At step t the model reads KALM's goal-oriented generation prompt (``tasks.generation_prefix``), the real
initial state and the real history ``s0, a0, …, s_t`` and its action head at the last state slot gives
``a_t`` — the same sequence layout :meth:`generate` uses for imagination, except that the states are the
environment's, not the model's.

The evaluator calls :meth:`LLMPolicy.act` once per step for the unfinished episodes, so a policy keeps the
previous call's KV cache and, when every row's history is a known row's history plus one step, feeds only
the new action and state slots (one at a time, like generation). Rows are recognised by a digest of their
instruction and history, so any other calling pattern (reordered, mixed lengths, new episodes) falls back
to recomputing the whole sequence, which gives the same actions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kalm_bench.api import Policy, PolicyBatch
from kalm_bench.api import UserError

from .tasks import action as action_seg
from .tasks import generation_prefix
from .tasks import state as state_seg

POLICY_FILE = "llm_policy.json"
FORMAT = 1


@dataclass
class Cache:
    """A backend's KV cache for a batch of equal-length sequences (``length`` slots or tokens so far)."""

    data: Any
    length: int


def _digest(instruction: str, states: np.ndarray, actions: np.ndarray, kind: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    text = instruction.encode()
    h.update(np.array([len(text), len(states), len(actions)], np.int64).tobytes())
    h.update(text)
    h.update(np.ascontiguousarray(states, np.float32).tobytes())
    h.update(np.ascontiguousarray(actions, np.int64 if kind == "discrete" else np.float32).tobytes())
    return h.digest()


def _history(batch: PolicyBatch, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Episode i's real states ``s0..s_t`` and actions ``a0..a_{t-1}`` (falling back to the current state)."""
    if batch.history_states:
        states = np.asarray(batch.history_states[i], np.float32)
    else:
        states = np.asarray(batch.states[i], np.float32)[None]
    actions = np.asarray(batch.history_actions[i]) if batch.history_actions else np.zeros((0,))
    if len(actions) != len(states) - 1:
        raise ValueError(f"episode {i}: {len(states)} states but {len(actions)} actions in the history")
    return states, actions


class EmbeddedActor:
    """Actions from an :class:`~.embedded.EmbeddedEngine` (slot decoder over sentence embeddings)."""

    def __init__(self, engine: Any):
        from .embedded import ACTION, STATE, TEXT

        self.engine, self.model, self.norms = engine, engine.model, engine.norms
        self.kinds = (TEXT, STATE, ACTION)
        self.device = engine.device
        self.state_dim, self.action_kind = self.model.state_dim, self.model.action_kind
        self.action_size = self.model.action_size
        self._text: dict[str, np.ndarray] = {}

    def _text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._text})
        if missing:
            self._text.update(zip(missing, np.asarray(self.engine.encoder.encode(missing), np.float32)))
        return np.stack([self._text[t] for t in texts])

    @torch.no_grad()
    def logits(self, instructions: list[str], states: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        """Action-head output for equal-length histories: states (B, k+1, S), actions (B, k[, A])."""
        return self.prefill(instructions, states, actions)[0]

    def _acts(self, a: np.ndarray) -> np.ndarray:
        if self.action_kind == "discrete":
            return a.astype(np.int64)
        a = a.astype(np.float32)
        return self.norms.action.encode(a) if self.norms.action is not None else a

    @torch.no_grad()
    def prefill(self, instructions: list[str], states: np.ndarray, actions: np.ndarray
                ) -> tuple[torch.Tensor, Cache]:
        text_k, state_k, action_k = self.kinds
        b, n_states = states.shape[:2]
        prefixes = [[seg["text"] for seg in generation_prefix(t)] for t in instructions]
        n_text = len(prefixes[0])
        length = n_text + 2 * n_states - 1
        if length > self.model.max_positions:
            raise ValueError("history longer than the model's positions")  # callers trim the window first
        kind = np.full((b, length), action_k, np.int64)
        kind[:, :n_text] = text_k
        kind[:, n_text::2] = state_k
        text = np.zeros((b, length, self.model.text_in.in_features), np.float32)
        text[:, :n_text] = self._text_vectors([s for p in prefixes for s in p]).reshape(b, n_text, -1)
        st = np.zeros((b, length, self.state_dim), np.float32)
        st[:, n_text::2] = self.norms.state.encode(states)
        if self.action_kind == "discrete":
            ac = np.zeros((b, length), np.int64)
            ac[:, n_text + 1::2] = self._acts(actions.reshape(b, -1))
        else:
            ac = np.zeros((b, length, self.action_size), np.float32)
            ac[:, n_text + 1::2] = self._acts(actions.reshape(b, n_states - 1, self.action_size))
        dev = self.device
        pos = torch.arange(length, device=dev).unsqueeze(0).expand(b, length)
        x = self.model.embed(torch.as_tensor(kind, device=dev), torch.as_tensor(text, device=dev),
                             torch.as_tensor(st, device=dev), torch.as_tensor(ac, device=dev), pos)
        h, kv = self.model(x)
        return self.model.action_out(h[:, -1]), Cache(kv, length)

    def _slot(self, kind: int, state: np.ndarray | None, action: np.ndarray | None, pos: int) -> torch.Tensor:
        b = len(state if state is not None else action)
        dev = self.device
        st = np.zeros((b, 1, self.state_dim), np.float32)
        if state is not None:
            st[:, 0] = self.norms.state.encode(state)
        if self.action_kind == "discrete":
            ac = np.zeros((b, 1), np.int64)
        else:
            ac = np.zeros((b, 1, self.action_size), np.float32)
        if action is not None:
            ac[:, 0] = self._acts(action.reshape((b,) + ac.shape[2:]))
        return self.model.embed(torch.full((b, 1), kind, device=dev),
                                torch.zeros(b, 1, self.model.text_in.in_features, device=dev),
                                torch.as_tensor(st, device=dev), torch.as_tensor(ac, device=dev),
                                torch.full((b, 1), pos, device=dev))

    @torch.no_grad()
    def extend(self, cache: Cache, rows: list[int], actions: np.ndarray, states: np.ndarray
               ) -> tuple[torch.Tensor, Cache] | None:
        """Append one real step (a_{t-1}, s_t) to the cached rows ``rows``; None if positions run out."""
        if cache.length + 2 > self.model.max_positions:
            return None
        _, state_k, action_k = self.kinds
        idx = torch.as_tensor(rows, device=self.device)
        kv = [(k.index_select(0, idx), v.index_select(0, idx)) for k, v in cache.data]
        # One slot per forward pass: a block of new positions would attend to each other non-causally.
        _, kv = self.model(self._slot(action_k, None, actions, cache.length), kv)
        h, kv = self.model(self._slot(state_k, states, None, cache.length + 1), kv)
        return self.model.action_out(h[:, -1]), Cache(kv, cache.length + 2)

    def max_steps(self) -> int:
        """Longest history (in actions) that fits the learned position table after the prompt."""
        n_text = len(generation_prefix("x"))
        return (self.model.max_positions - n_text - 1) // 2


class HFActor:
    """Actions from an :class:`~.hf.HFEngine` (causal LM with numeric slots)."""

    def __init__(self, engine: Any):
        self.engine, self.model, self.norms = engine, engine.model, engine.norms
        nm = self.model.numeric
        self.state_dim, self.action_kind, self.action_size = nm.state_dim, nm.action_kind, nm.action_size
        self.device = engine.device

    @torch.no_grad()
    def logits(self, instructions: list[str], states: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        return self.prefill(instructions, states, actions)[0]

    @torch.no_grad()
    def prefill(self, instructions: list[str], states: np.ndarray, actions: np.ndarray
                ) -> tuple[torch.Tensor, Cache]:
        from transformers import DynamicCache

        b, n_states = states.shape[:2]
        items = []
        for k in range(b):
            segs = generation_prefix(instructions[k]) + [state_seg(states[k, 0], loss=False)]
            for j in range(n_states - 1):
                a = actions[k, j]
                segs += [action_seg(int(a) if self.action_kind == "discrete" else np.asarray(a, np.float32),
                                    loss=False), state_seg(states[k, j + 1], loss=False)]
            items.append(self.engine.packer.pack({"segments": segs}, targets=False))
        batch = {k: v.to(self.device) for k, v in self.engine.packer.collate(items, left=True).items()}
        x = self.model.inputs(batch["ids"], batch["kind"], batch["st"], batch["ac"])
        mask = batch["valid"].long()
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        h, past = self.model.hidden(x, mask, pos, DynamicCache())
        return self.model.numeric.action_out(h[:, -1].float()), Cache((past, mask, pos[:, -1]), mask.shape[1])

    @torch.no_grad()
    def extend(self, cache: Cache, rows: list[int], actions: np.ndarray, states: np.ndarray
               ) -> tuple[torch.Tensor, Cache] | None:
        nm = self.model.numeric
        past, mask, last = cache.data
        idx = torch.as_tensor(rows, device=self.device)
        past.batch_select_indices(idx)  # in place: this cache is not used again
        mask, last = mask[idx], last[idx]
        dtype = self.model.lm.get_input_embeddings().weight.dtype
        if self.action_kind == "discrete":
            a = torch.as_tensor(actions.reshape(-1).astype(np.int64), device=self.device)
        else:
            an = actions.reshape(len(rows), -1).astype(np.float32)
            a = torch.as_tensor(self.norms.action.encode(an) if self.norms.action is not None else an,
                                device=self.device)
        s = torch.as_tensor(self.norms.state.encode(states.astype(np.float32)), device=self.device)
        h = None
        for x in (nm.embed_action(a), nm.state_in(s)):
            mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype, device=mask.device)], dim=1)
            last = last + 1
            h, past = self.model.hidden(x.to(dtype).unsqueeze(1), mask, last.unsqueeze(1), past)
        assert h is not None
        return nm.action_out(h[:, -1].float()), Cache((past, mask, last), cache.length + 2)

    def max_steps(self) -> int | None:
        return None  # the language model's own context limit applies


class LLMPolicy(Policy):
    """A :class:`~kalm_bench.api.Policy` over an actor; ``save`` records which model it reads, not weights.

    ``batch_size`` bounds the episodes per forward pass (None: all); ``kv_cache`` keeps the last call's
    cache for the next step (used only when the whole call fits one forward pass).
    """

    def __init__(self, actor: EmbeddedActor | HFActor, info: dict[str, Any], batch_size: int | None = None,
                 kv_cache: bool = True):
        self.actor, self.info = actor, dict(info)
        self.batch_size, self.kv_cache = batch_size, kv_cache
        self._cache: Cache | None = None
        self._rows: dict[bytes, int] = {}
        self.cached_calls = 0  # how many act calls extended the cache (for tests and measurements)

    def _decode(self, out: torch.Tensor) -> np.ndarray:
        if self.actor.action_kind == "discrete":
            return out.argmax(-1).cpu().numpy().astype(np.int64)
        a = out.float().cpu().numpy()
        norm = self.actor.norms.action
        return (norm.decode(a) if norm is not None else a).astype(np.float32)

    def act(self, batch: PolicyBatch) -> np.ndarray:
        n = len(batch.states)
        if n and np.asarray(batch.states).shape[1] != self.actor.state_dim:
            raise UserError(f"the grounded model reads {self.actor.state_dim}-d states, the environment gives "
                            f"{np.asarray(batch.states).shape[1]}-d ones", field="state_dim")
        kind = self.actor.action_kind
        insts = [str(t) for t in batch.instructions]
        hist = [_history(batch, i) for i in range(n)]
        use_cache = self.kv_cache and n > 0 and (self.batch_size is None or n <= self.batch_size)
        keys = [_digest(insts[i], s, a, kind) for i, (s, a) in enumerate(hist)] if use_cache else []
        prev, self._cache, rows_prev = self._cache, None, self._rows
        self._rows = {}
        if use_cache and prev is not None and len({len(s) for s, _ in hist}) == 1 and len(hist[0][0]) > 1:
            parents = [rows_prev.get(_digest(insts[i], s[:-1], a[:-1], kind)) for i, (s, a) in enumerate(hist)]
            if all(r is not None for r in parents):
                step = self.actor.extend(prev, [int(r) for r in parents],  # type: ignore[arg-type]
                                         np.stack([a[-1] for _, a in hist]), np.stack([s[-1] for s, _ in hist]))
                if step is not None:
                    self._cache, self._rows = step[1], {k: i for i, k in enumerate(keys)}
                    self.cached_calls += 1
                    return self._decode(step[0])
        cont = kind == "continuous"
        out = np.zeros((n, self.actor.action_size) if cont else (n,), np.float32 if cont else np.int64)
        window = self.actor.max_steps()
        # Episodes of equal history length share one forward pass without padding.
        by_len: dict[int, list[int]] = {}
        for i, (s, _) in enumerate(hist):
            by_len.setdefault(len(s), []).append(i)
        chunk = self.batch_size or max(1, n)
        for n_states, rows in sorted(by_len.items()):
            # Past the learned positions the oldest steps drop out; s_j, a_j, …, s_t stays a consistent
            # history (the prompt's "initial state" becomes s_j).
            first = 0 if window is None else max(0, n_states - 1 - window)
            for c in range(0, len(rows), chunk):
                part = rows[c:c + chunk]
                states = np.stack([hist[i][0][first:] for i in part])
                if n_states > 1:
                    acts = np.stack([hist[i][1][first:] for i in part])
                else:
                    acts = np.zeros((len(part), 0) + ((self.actor.action_size,) if cont else ()))
                logits, cache = self.actor.prefill([insts[i] for i in part], states, acts)
                out[part] = self._decode(logits)
                if use_cache and len(part) == n and first == 0:
                    self._cache, self._rows = cache, {keys[i]: r for r, i in enumerate(part)}
        return out

    def save(self, path: Path) -> None:
        (Path(path) / POLICY_FILE).write_text(json.dumps({"format": FORMAT, **self.info}, indent=2,
                                                         sort_keys=True))


def make_policy(engine: Any, info: dict[str, Any]) -> LLMPolicy:
    from .embedded import EmbeddedEngine

    actor = EmbeddedActor(engine) if isinstance(engine, EmbeddedEngine) else HFActor(engine)
    return LLMPolicy(actor, info)
