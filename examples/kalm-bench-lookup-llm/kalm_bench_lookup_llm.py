"""``lookup-llm``: a minimal LLM backend on KALM's engine route (no neural network).

A backend that subclasses ``KalmBackend`` implements two things: ``ground`` (learn from the grounding data
and write the model into ``ctx.workdir``) and ``engine`` (load it as an ``Engine``). KALM's shared code then
does imagination with oracle or model labels, judging other rollouts, and the diagnostics.

This "model" is a lookup table of the data's dynamics: the next state of each (state, action) seen in the
data. It imagines by acting at random and looking the next state up (a state it never saw stays put), and
its success head never fires. It shows the route, not a good model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kalm_bench import hookimpl
from kalm_bench.api import GroundingContext, UserError
from kalm_bench_plugins.kalm.backends import GenerationConfig, KalmBackend
from kalm_bench_plugins.kalm.engine import Rollout, StopRule

MODEL_FILE = "lookup.json"


class LookupEngine:
    """The three methods of ``kalm_bench_plugins.kalm.engine.Engine``."""

    def __init__(self, table: dict[str, list[float]], action_size: int, seed: int = 0):
        self.table, self.action_size = table, action_size
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def key(state: np.ndarray, action: Any) -> str:
        return json.dumps([[round(float(x), 4) for x in np.ravel(state)], int(action)])

    def generate(self, instructions: list[str], initial_states: np.ndarray, max_steps: int,
                 stop: StopRule | None, batch_size: int, use_cache: bool = True,
                 forced: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Rollout]:
        out = []
        for i, s0 in enumerate(initial_states):
            states, actions = [np.asarray(s0, np.float32)], []
            steps = len(forced[i][1]) if forced is not None else max_steps
            for t in range(steps):
                if forced is not None:  # judging someone else's rollout: replay it
                    a, nxt = forced[i][1][t], np.asarray(forced[i][0][t + 1], np.float32)
                else:
                    a = int(self.rng.integers(self.action_size))
                    nxt = np.asarray(self.table.get(self.key(states[-1], a), states[-1]), np.float32)
                states.append(nxt)
                actions.append(a)
                done = np.zeros(len(states), np.float32)
                if forced is None and stop is not None and stop(i, np.stack(states), np.asarray(actions), done):
                    break
            out.append(Rollout(states=np.stack(states), actions=np.asarray(actions, np.int64),
                               done_prob=np.zeros(len(states), np.float32),
                               reward_pred=np.zeros(len(actions), np.float32)))
        return out

    def explain(self, rollouts: list[tuple[np.ndarray, np.ndarray]], seen: bool) -> list[str]:
        return [""] * len(rollouts)  # this model cannot explain rollouts

    def goal_of_text(self, texts: list[str]) -> list[str]:
        return [""] * len(texts)


class LookupLLM(KalmBackend):
    name: ClassVar[str] = "lookup-llm"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "example LLM backend: a lookup table of the data's dynamics"

    class Config(GenerationConfig):
        pass

    def ground(self, ctx: GroundingContext) -> None:
        ds = ctx.dataset
        if ds.action_kind != "discrete":
            raise UserError("lookup-llm needs discrete actions", field="llm.backend")
        table = {LookupEngine.key(s, a): [float(x) for x in n]
                 for s, a, n in zip(ds.states, ds.actions, ds.next_states)}
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        (ctx.workdir / MODEL_FILE).write_text(json.dumps({"table": table, "action_size": int(ds.action_size)}))

    def engine(self, model_dir: Path) -> LookupEngine:
        path = Path(model_dir) / MODEL_FILE
        if not path.is_file():
            raise UserError("not a lookup-llm model directory", file=path)
        meta = json.loads(path.read_text())
        return LookupEngine(meta["table"], int(meta["action_size"]))


@hookimpl
def register_llm_backends(register):
    register(LookupLLM)
