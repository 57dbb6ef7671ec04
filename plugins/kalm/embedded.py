"""The embedded default backend: a small causal transformer over sentence-embedding and numeric slots.

Every text segment of a grounding example (prompt template or instruction) becomes one slot holding its
frozen all-MiniLM-L6-v2 embedding, projected to the model width; states and actions enter through learned
projections at their own slots and leave through learned heads (MSE for states, cross-entropy for
discrete actions, MSE for continuous ones). Language knowledge comes from the frozen encoder: an unseen
phrasing lands near the training phrasings of the same goal, so the decoder never needs to see it.

Rollout explanation predicts a vector in the encoder's space; the explanation is the known instruction
whose embedding scores highest (trained with a multi-positive contrastive loss: every phrasing of the
true goal counts as correct). A success head (at every state slot) and a reward head (at every state
after the first) give the model's own labels for imagined rollouts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .engine import Rollout, forced_predictions, forced_step
from .losses import numeric_losses
from .normalise import Normalizers
from .encoder import DIM as TEXT_DIM
from .encoder import sentence_encoder
from .tasks import explanation_segments, generation_prefix, success_judge_examples

TEXT, STATE, ACTION = 0, 1, 2
LOSS_WEIGHTS = {"state": 1.0, "action": 1.0, "explain": 1.0, "done": 0.5, "reward": 0.2}
# Success-head negatives for the decoder's own head (tasks.success_judge_examples) when there is no judge.
JUDGE_EXAMPLES = False
# The success judge trains for JUDGE_PASSES passes over its relabelled transitions, at most JUDGE_STEPS
# optimizer steps (0: no judge; model labels then come from the decoder's own success head).
JUDGE_PASSES = 20
JUDGE_STEPS = 2500


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            k = torch.cat([cache[0], k], dim=2)
            v = torch.cat([cache[1], v], dim=2)
        # A single new position may attend to every cached one; a block of new positions is causal.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and n > 1)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, n, d)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k, v)


class SlotDecoder(nn.Module):
    def __init__(self, state_dim: int, action_kind: str, action_size: int, d_model: int, layers: int,
                 heads: int, max_positions: int, dropout: float = 0.0, judge: bool = False):
        super().__init__()
        self.state_dim, self.action_kind, self.action_size = state_dim, action_kind, action_size
        self.max_positions = max_positions
        self.text_in = nn.Linear(TEXT_DIM, d_model)
        self.state_in = nn.Linear(state_dim, d_model)
        self.action_in: nn.Module = nn.Embedding(action_size, d_model) if action_kind == "discrete" \
            else nn.Linear(action_size, d_model)
        self.kind_emb = nn.Embedding(3, d_model)
        self.pos_emb = nn.Embedding(max_positions, d_model)
        self.blocks = nn.ModuleList([Block(d_model, heads, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d_model)
        self.state_out = nn.Linear(d_model, state_dim)
        self.action_out = nn.Linear(d_model, action_size)
        self.text_out = nn.Linear(d_model, TEXT_DIM)
        self.done_out = nn.Linear(d_model, 1)
        self.reward_out = nn.Linear(d_model, 1)
        self.apply(self._init)
        self.judge: Judge | None = Judge(state_dim, action_kind, action_size) if judge else None

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def embed(self, kind: torch.Tensor, text: torch.Tensor, state: torch.Tensor, act: torch.Tensor,
              pos: torch.Tensor) -> torch.Tensor:
        """kind (B,L) · text (B,L,384) · state (B,L,S) · act (B,L) ints or (B,L,A) → (B,L,d)."""
        x_text = self.text_in(text)
        x_state = self.state_in(state)
        x_act = self.action_in(act.clamp_min(0)) if self.action_kind == "discrete" else self.action_in(act)
        k = kind.unsqueeze(-1)
        x = torch.where(k == TEXT, x_text, torch.where(k == STATE, x_state, x_act))
        return x + self.kind_emb(kind) + self.pos_emb(pos)

    def forward(self, x: torch.Tensor, cache: list | None = None) -> tuple[torch.Tensor, list]:
        new_cache = []
        for i, blk in enumerate(self.blocks):
            x, kv = blk(x, cache[i] if cache is not None else None)
            new_cache.append(kv)
        return self.ln_f(x), new_cache


class Judge(nn.Module):
    """The model's success judgement: instruction embedding, s, a, s' → logit of "the goal holds after s'".

    It reads only the instruction and the transition, never the generated history, so it cannot learn
    "the rollout has gone on as long as the expert's" or echo the generator's own intent (a success head
    on the decoder's hidden state did both and accepted 80–100 % of imagined rollouts).
    """

    def __init__(self, state_dim: int, action_kind: str, action_size: int, hidden: int = 256,
                 features: int = 128):
        super().__init__()
        self.action_kind, self.action_size = action_kind, action_size
        # Bilinear: the transition gives ``features`` goal-agnostic predicates, the instruction picks how
        # to weigh them. Every goal's data then trains the same predicates (a plain MLP over the
        # concatenation has to learn each goal's geometry separately and was far less data-efficient).
        self.transition = nn.Sequential(nn.Linear(3 * state_dim + action_size, hidden), nn.GELU(),
                                        nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, features))
        self.instruction = nn.Sequential(nn.Linear(TEXT_DIM, hidden), nn.GELU(), nn.Linear(hidden, features + 1))

    def forward(self, text: torch.Tensor, prev: torch.Tensor, act: torch.Tensor, nxt: torch.Tensor
                ) -> torch.Tensor:
        """text (B,384) · prev, nxt (B,S) normalised · act (B,) ints or (B,A) normalised → logits (B,)."""
        a = F.one_hot(act.long().clamp_min(0), self.action_size).float() if self.action_kind == "discrete" \
            else act
        f = self.transition(torch.cat([prev, nxt, nxt - prev, a], -1))
        g = self.instruction(text)
        return (f * g[:, :-1]).sum(-1) + g[:, -1]


# ---------------------------------------------------------------------------------------------------------
# Examples → padded tensors


class Packer:
    """Turns the shared example format into slot arrays with next-position targets."""

    def __init__(self, norms: Normalizers, action_kind: str, text_index: dict[str, int],
                 goal_index: dict[str, int]):
        self.norms, self.action_kind = norms, action_kind
        self.text_index, self.goal_index = text_index, goal_index

    def pack(self, ex: dict[str, Any]) -> dict[str, Any]:
        segs = ex["segments"]
        last = max((i for i, s in enumerate(segs)
                    if s["loss"] or s.get("done") is not None or s.get("reward") is not None), default=-1)
        kind, tid, st, ac = [], [], [], []
        st_t, st_m, ac_t, ac_m, ex_t, dn_t, dn_m, rw_t, rw_m = ([] for _ in range(9))
        for i, s in enumerate(segs[:last + 1]):
            if s["kind"] == "text" and s["loss"]:
                # Only the instruction is a target; punctuation after it has no meaning in embedding space.
                if s.get("role") == "instruction" and kind:
                    ex_t[-1] = self.goal_index.get(ex.get("goal", ""), -1)
                break
            pos = len(kind)
            kind.append({"text": TEXT, "state": STATE, "action": ACTION}[s["kind"]])
            tid.append(self.text_index[s["text"]] if s["kind"] == "text" else 0)
            st.append(s["value"] if s["kind"] == "state" else None)
            ac.append(s["value"] if s["kind"] == "action" else None)
            for lst, v in ((st_t, None), (st_m, 0.0), (ac_t, None), (ac_m, 0.0), (ex_t, -1),
                           (dn_t, 0.0), (dn_m, 0.0), (rw_t, 0.0), (rw_m, 0.0)):
                lst.append(v)
            if s["loss"] and pos > 0 and s["kind"] == "state":
                st_t[pos - 1], st_m[pos - 1] = s["value"], 1.0
            if s["loss"] and pos > 0 and s["kind"] == "action":
                ac_t[pos - 1], ac_m[pos - 1] = s["value"], 1.0
            if s["kind"] == "state" and s.get("done") is not None:
                dn_t[pos], dn_m[pos] = float(s["done"]), 1.0
            if s["kind"] == "state" and s.get("reward") is not None:
                rw_t[pos], rw_m[pos] = float(s["reward"]), 1.0
        return dict(kind=kind, tid=tid, st=st, ac=ac, st_t=st_t, st_m=st_m, ac_t=ac_t, ac_m=ac_m,
                    ex_t=ex_t, dn_t=dn_t, dn_m=dn_m, rw_t=rw_t, rw_m=rw_m)

    def pack_inputs(self, ex: dict[str, Any]) -> dict[str, Any]:
        """Every segment as an input slot, no targets: the answer is read at the last slot."""
        segs = ex["segments"]
        n = len(segs)
        z = [0.0] * n
        return dict(kind=[{"text": TEXT, "state": STATE, "action": ACTION}[s["kind"]] for s in segs],
                    tid=[self.text_index[s["text"]] if s["kind"] == "text" else 0 for s in segs],
                    st=[s["value"] if s["kind"] == "state" else None for s in segs],
                    ac=[s["value"] if s["kind"] == "action" else None for s in segs],
                    st_t=[None] * n, st_m=z, ac_t=[None] * n, ac_m=z, ex_t=[-1] * n, dn_t=z, dn_m=z,
                    rw_t=z, rw_m=z)

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        b, n = len(items), max(len(it["kind"]) for it in items)
        s_dim = len(self.norms.state.mean)
        cont = self.action_kind == "continuous"
        a_dim = len(self.norms.action.mean) if cont and self.norms.action is not None else 0
        kind = np.zeros((b, n), np.int64)
        tid = np.zeros((b, n), np.int64)
        st = np.zeros((b, n, s_dim), np.float32)
        st_t = np.zeros((b, n, s_dim), np.float32)
        ac = np.zeros((b, n, a_dim), np.float32) if cont else np.zeros((b, n), np.int64)
        ac_t = np.zeros((b, n, a_dim), np.float32) if cont else np.zeros((b, n), np.int64)
        f = {k: np.zeros((b, n), np.float32) for k in ("st_m", "ac_m", "dn_t", "dn_m", "rw_t", "rw_m")}
        ex_t = np.full((b, n), -1, np.int64)
        valid = np.zeros((b, n), bool)
        for i, it in enumerate(items):
            m = len(it["kind"])
            kind[i, :m], tid[i, :m], valid[i, :m] = it["kind"], it["tid"], True
            ex_t[i, :m] = it["ex_t"]
            for k in f:
                f[k][i, :m] = it[k]
            for j in range(m):
                if it["st"][j] is not None:
                    st[i, j] = it["st"][j]
                if it["st_t"][j] is not None:
                    st_t[i, j] = it["st_t"][j]
                if it["ac"][j] is not None:
                    ac[i, j] = it["ac"][j]
                if it["ac_t"][j] is not None:
                    ac_t[i, j] = it["ac_t"][j]
        st = self.norms.state.encode(st)
        st_t = self.norms.state.encode(st_t)
        if cont and self.norms.action is not None:
            ac, ac_t = self.norms.action.encode(ac), self.norms.action.encode(ac_t)
        f["rw_t"] = self.norms.reward.encode(f["rw_t"][..., None])[..., 0]
        out = dict(kind=kind, tid=tid, st=st, st_t=st_t, ac=ac, ac_t=ac_t, ex_t=ex_t, valid=valid, **f)
        return {k: torch.as_tensor(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
# Training


def multi_positive_nce(pred: torch.Tensor, cands: torch.Tensor, cand_goal: torch.Tensor,
                       goal: torch.Tensor, temperature: float) -> torch.Tensor:
    """−log P(any phrasing of the true goal) under a softmax over all known instructions."""
    logits = F.normalize(pred, dim=-1) @ cands.T / temperature
    pos = cand_goal.unsqueeze(0) == goal.unsqueeze(1)
    return (torch.logsumexp(logits, -1) - torch.logsumexp(logits.masked_fill(~pos, -1e9), -1)).mean()


def losses(model: SlotDecoder, batch: dict[str, torch.Tensor], text_table: torch.Tensor,
           cands: torch.Tensor, cand_goal: torch.Tensor, temperature: float,
           weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    b, n = batch["kind"].shape
    pos = torch.arange(n).unsqueeze(0).expand(b, n)
    x = model.embed(batch["kind"], text_table[batch["tid"]], batch["st"], batch["ac"], pos)
    h, _ = model(x)
    parts = numeric_losses(model, h, batch)
    m = batch["ex_t"] >= 0
    if m.any():
        parts["explain"] = multi_positive_nce(model.text_out(h[m]), cands, cand_goal, batch["ex_t"][m],
                                              temperature)
    total = sum(weights[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def batches_by_length(items: list[dict[str, Any]], batch_size: int, rng: np.random.Generator
                      ) -> list[list[int]]:
    """Random batches of similar length (less padding), in random order."""
    order = rng.permutation(len(items))
    chunk = batch_size * 32
    out = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i:i + chunk], key=lambda j: len(items[j]["kind"]))
        out += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# A loaded grounded model


class EmbeddedEngine:
    """Generation, explanation and judgement with a grounded :class:`SlotDecoder`."""

    def __init__(self, model: SlotDecoder, norms: Normalizers, encoder: Any,
                 cand_texts: list[str], cand_goals: list[str], device: str = "cpu",
                 cand_embeddings: np.ndarray | None = None):
        self.model = model.eval()
        self.norms, self.encoder, self.device = norms, encoder, device
        self.cand_texts, self.cand_goals = cand_texts, cand_goals
        self._cands: torch.Tensor | None = None
        if cand_texts:
            emb = cand_embeddings if cand_embeddings is not None else encoder.encode(cand_texts)
            self._cands = torch.as_tensor(emb).to(device)

    # -- slot embedding helpers ------------------------------------------------------------------------
    def _text_slots(self, texts: list[str], pos0: int) -> torch.Tensor:
        e = torch.as_tensor(self.encoder.encode(texts)).to(self.device)
        b = len(texts)
        z = torch.zeros(b, 1, dtype=torch.long, device=self.device)
        s = torch.zeros(b, 1, self.model.state_dim, device=self.device)
        return self.model.embed(z + TEXT, e.unsqueeze(1), s, self._zero_act(b),
                                torch.full((b, 1), pos0, device=self.device))

    def _zero_act(self, b: int) -> torch.Tensor:
        if self.model.action_kind == "discrete":
            return torch.zeros(b, 1, dtype=torch.long, device=self.device)
        return torch.zeros(b, 1, self.model.action_size, device=self.device)

    def _state_slot(self, s_norm: torch.Tensor, pos: int) -> torch.Tensor:
        b = len(s_norm)
        return self.model.embed(torch.full((b, 1), STATE, device=self.device),
                                torch.zeros(b, 1, TEXT_DIM, device=self.device), s_norm.unsqueeze(1),
                                self._zero_act(b), torch.full((b, 1), pos, device=self.device))

    def _action_slot(self, a: torch.Tensor, pos: int) -> torch.Tensor:
        b = len(a)
        return self.model.embed(torch.full((b, 1), ACTION, device=self.device),
                                torch.zeros(b, 1, TEXT_DIM, device=self.device),
                                torch.zeros(b, 1, self.model.state_dim, device=self.device),
                                a.unsqueeze(1), torch.full((b, 1), pos, device=self.device))

    def _decode_action(self, h: torch.Tensor) -> torch.Tensor:
        out = self.model.action_out(h)
        return out.argmax(-1) if self.model.action_kind == "discrete" else out

    # -- generation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, instructions: list[str], initial_states: np.ndarray, max_steps: int,
                 stop: Callable[[int, np.ndarray, np.ndarray, np.ndarray], bool] | None,
                 batch_size: int, use_cache: bool = True,
                 forced: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Rollout]:
        max_steps = min(max_steps, (self.model.max_positions - 4) // 2)
        out: list[Rollout] = []
        for i in range(0, len(instructions), batch_size):
            out += self._generate_batch(instructions[i:i + batch_size], initial_states[i:i + batch_size],
                                        max_steps, stop, i, use_cache,
                                        None if forced is None else forced[i:i + batch_size])
        return out

    def _generate_batch(self, insts: list[str], s0: np.ndarray, max_steps: int,
                        stop: Callable | None, offset: int, use_cache: bool,
                        forced: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Rollout]:
        b = len(insts)
        prefix = [generation_prefix(t) for t in insts]
        n_text = len(prefix[0])
        slots = [self._text_slots([p[j]["text"] for p in prefix], j) for j in range(n_text)]
        s = torch.as_tensor(self.norms.state.encode(s0)).to(self.device)
        slots.append(self._state_slot(s, n_text))
        x = torch.cat(slots, dim=1)
        h, cache = self.model(x)
        h = h[:, -1]
        states = [[s0[k].astype(np.float32)] for k in range(b)]
        actions: list[list[Any]] = [[] for _ in range(b)]
        judge = self.model.judge
        if judge is not None:
            # The judge scores transitions; the initial state has none (model labels never read it).
            inst_emb = torch.as_tensor(self.encoder.encode([p[1]["text"] for p in prefix])).to(self.device)
            done_p = [[0.0] for _ in range(b)]
        else:
            done_p = [[float(torch.sigmoid(self.model.done_out(h[k]))[0])] for k in range(b)]
        s_prev = s
        rewards: list[list[float]] = [[] for _ in range(b)]
        active = list(range(b))  # rows of the (compacted) batch → rollout index
        pos = n_text + 1
        pred_a: list[list[Any]] = [[] for _ in range(b)]
        pred_s: list[list[Any]] = [[] for _ in range(b)]
        for t in range(max_steps):
            a = self._decode_action(h)
            if forced is not None:  # teacher forcing: the given rollout's action, the heads still read
                a_own = self._raw_actions(a)
                a = forced_step(forced, active, t, "action", self.norms, self.model.action_kind, a)
            xa = self._action_slot(a, pos)
            if use_cache:
                ha, cache = self.model(xa, cache)
            else:
                x = torch.cat([x, xa], dim=1)
                ha, _ = self.model(x)
            ha = ha[:, -1]
            s_norm = self.model.state_out(ha)
            if forced is not None:
                s_own = self.norms.state.decode(s_norm.cpu().numpy())
                for row, k in enumerate(active):
                    pred_a[k].append(a_own[row])
                    pred_s[k].append(s_own[row])
                s_norm = forced_step(forced, active, t, "state", self.norms, self.model.action_kind, s_norm)
            xs = self._state_slot(s_norm, pos + 1)
            if use_cache:
                hs, cache = self.model(xs, cache)
            else:
                x = torch.cat([x, xs], dim=1)
                hs, _ = self.model(x)
            hs = hs[:, -1]
            pos += 2
            s_raw = self.norms.state.decode(s_norm.cpu().numpy())
            a_np = self._raw_actions(a)
            if judge is not None:
                dp = torch.sigmoid(judge(inst_emb, s_prev, a, s_norm)).cpu().numpy()
            else:
                dp = torch.sigmoid(self.model.done_out(hs)[:, 0]).cpu().numpy()
            s_prev = s_norm
            rw = self.norms.reward.decode(self.model.reward_out(hs).cpu().numpy())[:, 0]
            keep = []
            for row, k in enumerate(active):
                states[k].append(s_raw[row])
                actions[k].append(a_np[row])
                done_p[k].append(float(dp[row]))
                rewards[k].append(float(rw[row]))
                finished = (forced is not None and t + 1 >= len(forced[k][1])) or (
                    stop is not None and stop(offset + k, np.stack(states[k]), np.asarray(actions[k]),
                                              np.asarray(done_p[k])))
                if not finished:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.as_tensor(keep, device=self.device)
                if use_cache:
                    cache = [(kk.index_select(0, idx), vv.index_select(0, idx)) for kk, vv in cache]
                else:
                    x = x.index_select(0, idx)
                hs = hs.index_select(0, idx)
                s_prev = s_prev.index_select(0, idx)
                if judge is not None:
                    inst_emb = inst_emb.index_select(0, idx)
                active = [active[r] for r in keep]
            h = hs
        act_dtype = np.int64 if self.model.action_kind == "discrete" else np.float32
        return [Rollout(states=np.stack(states[k]).astype(np.float32),
                        actions=np.asarray(actions[k], act_dtype).reshape(
                            (-1,) if self.model.action_kind == "discrete" else (-1, self.model.action_size)),
                        done_prob=np.asarray(done_p[k], np.float32),
                        reward_pred=np.asarray(rewards[k], np.float32),
                        **(forced_predictions(pred_a, pred_s, k, self.model.action_kind, self.model.action_size)
                           if forced is not None else {})) for k in range(b)]

    def _raw_actions(self, a: torch.Tensor) -> np.ndarray:
        a_np = a.cpu().numpy()
        if self.model.action_kind == "continuous" and self.norms.action is not None:
            a_np = self.norms.action.decode(a_np)
        return a_np

    # -- explanation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def explain(self, rollouts: list[tuple[np.ndarray, np.ndarray]], seen: bool,
                batch_size: int = 256) -> list[str]:
        if self._cands is None:
            return ["" for _ in rollouts]
        packer = Packer(self.norms, self.model.action_kind, {}, {})
        out: list[str] = []
        for i in range(0, len(rollouts), batch_size):
            chunk = rollouts[i:i + batch_size]
            exs = [{"segments": explanation_segments(st, ac, self.model.action_kind, None, seen=seen)}
                   for st, ac in chunk]
            texts = sorted({s["text"] for e in exs for s in e["segments"] if s["kind"] == "text"})
            packer.text_index = {t: j for j, t in enumerate(texts)}
            table = torch.as_tensor(self.encoder.encode(texts)).to(self.device)
            items = [packer.pack_inputs(e) for e in exs]
            batch = packer.collate(items)
            b, n = batch["kind"].shape
            x = self.model.embed(batch["kind"].to(self.device), table[batch["tid"].to(self.device)],
                                 batch["st"].to(self.device), batch["ac"].to(self.device),
                                 torch.arange(n, device=self.device).unsqueeze(0).expand(b, n))
            h, _ = self.model(x)
            last = torch.as_tensor([len(it["kind"]) - 1 for it in items], device=self.device)
            hv = h[torch.arange(b, device=self.device), last]
            scores = F.normalize(self.model.text_out(hv), dim=-1) @ self._cands.T
            out += [self.cand_goals[j] for j in scores.argmax(-1).tolist()]
        return out




# ---------------------------------------------------------------------------------------------------------
# Ground / load


def train_judge(model: SlotDecoder, dataset: Any, check: Callable, norms: Normalizers, encoder: Any,
                rng: np.random.Generator, device: str, batch_size: int = 512) -> dict[str, Any]:
    """Fit ``model.judge`` on relabelled real transitions (``tasks.judge_transitions``); 10 % held out."""
    from .tasks import judge_transitions

    t0 = time.perf_counter()
    data = judge_transitions(dataset, check, rng)
    n = len(data["label"])
    if n == 0:
        return {"examples": 0}
    texts = sorted(set(data["instruction"].tolist()))
    text_ids = torch.as_tensor(np.searchsorted(np.asarray(texts), data["instruction"]))
    table = torch.as_tensor(encoder.encode(texts)).to(device)
    prev = torch.as_tensor(norms.state.encode(data["prev"])).to(device)
    nxt = torch.as_tensor(norms.state.encode(data["next"])).to(device)
    act = data["action"]
    if dataset.action_kind == "continuous" and norms.action is not None:
        act = norms.action.encode(act)
    act = torch.as_tensor(act).to(device)
    label = torch.as_tensor(data["label"], dtype=torch.float32, device=device)
    order = torch.as_tensor(rng.permutation(n), device=device)
    n_val = n // 10
    val, train = order[:n_val], order[n_val:]
    judge = model.judge
    assert judge is not None
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = max(1, min(JUDGE_STEPS, math.ceil(len(train) * JUDGE_PASSES / batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    judge.train()
    for _ in range(steps):
        idx = train[torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)]
        logits = judge(table[text_ids[idx]], prev[idx], act[idx], nxt[idx])
        loss = F.binary_cross_entropy_with_logits(logits, label[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    judge.eval()
    with torch.no_grad():
        pred = torch.sigmoid(judge(table[text_ids[val]], prev[val], act[val], nxt[val])) >= 0.5
        truth = label[val] > 0.5
    from .labels import agreement_stats

    stats = agreement_stats(truth.cpu().numpy(), pred.cpu().numpy())
    return {"examples": n, "positives": float(label.mean()), "steps": steps,
            "seconds": time.perf_counter() - t0, **{f"heldout_{k}": v for k, v in stats.items()}}


def ground(cfg: Any, dataset: Any, tasks: list[Any], seed: int, workdir: Path, horizon: int,
           progress: Callable[[int, int], None], env: Any) -> dict[str, Any]:
    """Train a :class:`SlotDecoder` on ``tasks``' examples and save it into ``workdir``.

    ``env`` (the grounding context's environment) labels the success judge's training transitions
    (``tasks.judge_transitions``). When it cannot label, there is no judge and model labels come from the
    decoder's own success head, trained on the expert data's success flags only.
    """
    from .labels import success_checker
    from .model_files import write_json

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    norms = Normalizers.fit(dataset, cfg.normalize)
    encoder = sentence_encoder()
    # Candidate instructions for explanation: every known phrasing, labelled with its goal.
    cand_texts, cand_goals = [], []
    seen_pairs: set[tuple[str, str]] = set()
    from .tasks import strip_instruction

    for inst, goal in zip(dataset.instructions, dataset.goals):
        key = (strip_instruction(str(inst)), str(goal))
        if key not in seen_pairs:
            seen_pairs.add(key)
            cand_texts.append(key[0])
            cand_goals.append(key[1])
    goal_ids = {g: i for i, g in enumerate(sorted(set(cand_goals)))}
    # The success head is read on the generation prompt, so it gets its negatives only next to that task.
    check = success_checker(env, dataset) if any(t.name == "generation" for t in tasks) else None
    use_judge = check is not None and JUDGE_STEPS > 0
    if not use_judge and not JUDGE_EXAMPLES:
        check = None
    max_len = int(dataset.lengths.max()) if dataset.n_episodes else 1
    max_positions = 2 * max(max_len, horizon) + 16
    model = SlotDecoder(dataset.state_dim, dataset.action_kind, int(dataset.action_size), cfg.d_model,
                        cfg.layers, cfg.heads, max_positions, cfg.dropout,
                        judge=use_judge).to(cfg.device)

    def epoch() -> list[dict[str, Any]]:
        # Re-drawn every epoch: dynamics steps, other goals and noise are random per epoch.
        exs = [ex for t in tasks for ex in t.examples(dataset, rng)]
        return exs + (success_judge_examples(dataset, check, rng)
                      if check is not None and JUDGE_EXAMPLES and not use_judge else [])

    epoch_examples = [epoch()]
    texts = sorted({s["text"] for ex in epoch_examples[0] for s in ex["segments"] if s["kind"] == "text"})
    texts = sorted(set(texts) | set(cand_texts))
    text_index = {t: i for i, t in enumerate(texts)}
    text_table = torch.as_tensor(encoder.encode(texts)).to(cfg.device)
    cands = torch.as_tensor(encoder.encode(cand_texts)).to(cfg.device)
    cand_goal = torch.as_tensor([goal_ids[g] for g in cand_goals], device=cfg.device)
    t_enc = time.perf_counter() - t0
    packer = Packer(norms, dataset.action_kind, text_index, goal_ids)
    n_ex = len(epoch_examples[0])
    steps_per_epoch = max(1, math.ceil(n_ex / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = min(200, total // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    weights = dict(LOSS_WEIGHTS)
    history = []
    step = 0
    model.train()
    for ep in range(cfg.epochs):
        exs = epoch_examples[0] if ep == 0 else epoch()
        items = [packer.pack(ex) for ex in exs]
        items = [it for it in items if it["kind"]]
        sums: dict[str, float] = {}
        for idx in batches_by_length(items, cfg.batch_size, rng):
            batch = {k: v.to(cfg.device) for k, v in packer.collate([items[j] for j in idx]).items()}
            loss, parts = losses(model, batch, text_table, cands, cand_goal, cfg.temperature, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            progress(step, total)
        history.append({k: v / steps_per_epoch for k, v in sums.items()})
    judge_stats = train_judge(model, dataset, check, norms, encoder, rng, cfg.device) \
        if model.judge is not None else {}
    model.eval()
    torch.save(model.state_dict(), workdir / "model.pt")
    np.save(workdir / "candidates.npy", cands.cpu().numpy())
    norms.save(workdir / "normalizers.npz")
    meta = {
        "backend": "embedded", "state_dim": dataset.state_dim, "action_kind": dataset.action_kind,
        "action_size": int(dataset.action_size), "max_positions": max_positions,
        "tasks": [t.name for t in tasks], "candidates": {"texts": cand_texts, "goals": cand_goals},
        "history": history, "steps": step, "seconds": time.perf_counter() - t0, "encode_seconds": t_enc,
        "config": cfg.model_dump(mode="json"), "n_examples_per_epoch": n_ex,
        "loss_weights": weights, "judge": judge_stats,
        "success_judge_examples": sum(ex["task"] == "success-judge" for ex in epoch_examples[0]),
    }
    write_json(workdir / "kalm_model.json", meta)
    return meta


def load_engine(model_dir: Path, device: str = "cpu") -> EmbeddedEngine:
    from kalm_bench.api import UserError

    from .model_files import read_meta

    meta = read_meta(model_dir, "embedded")
    c = meta["config"]
    model = SlotDecoder(meta["state_dim"], meta["action_kind"], meta["action_size"], c["d_model"],
                        c["layers"], c["heads"], meta["max_positions"], 0.0, judge=bool(meta.get("judge")))
    wpath = Path(model_dir) / "model.pt"
    if not wpath.is_file():
        raise UserError("grounded model weights are missing", file=wpath)
    try:
        model.load_state_dict(torch.load(wpath, map_location=device, weights_only=True))
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise UserError(f"cannot load model weights ({type(exc).__name__}: {exc})", file=wpath) from None
    norms = Normalizers.load(Path(model_dir) / "normalizers.npz")
    cpath = Path(model_dir) / "candidates.npy"
    cand = np.load(cpath, allow_pickle=False) if cpath.is_file() else None
    if cand is not None and len(cand) != len(meta["candidates"]["texts"]):
        raise UserError("candidate embeddings do not match kalm_model.json", file=cpath)
    return EmbeddedEngine(model.to(device), norms, sentence_encoder(), meta["candidates"]["texts"],
                          meta["candidates"]["goals"], device, cand)
