"""The rollout sources every env and LLM backend get: ``llm`` (KALM's imagination) and ``random`` (its control).

``random`` differs from ``llm`` only in who proposes the rollouts: the same goals and initial states (the
rollouts stage draws them with the same seed), the same number of rollouts, the same labels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from kalm_bench import hookimpl
from kalm_bench.api import ImagineContext, RolloutSource, StrictConfig, UserError

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import TrajectoryDataset


class LLMSource(RolloutSource):
    name: ClassVar[str] = "llm"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = "the grounded LLM imagines each rollout (KALM itself: the kalm variant)"
    needs_llm: ClassVar[bool] = True

    def propose(self, ctx: ImagineContext) -> TrajectoryDataset:
        if ctx.llm is None:
            raise UserError("the llm rollout source needs a grounded LLM (an 'llm' section)", field="llm")
        ctx.env.require_imagination(ctx.level, ctx.goals, ctx.labels)
        return ctx.llm.backend.imagine(ctx)


class RandomSource(RolloutSource):
    """Uniformly random actions in the env's simulator from each goal's own initial state.

    Labelled like KALM's rollouts: ``oracle`` by the env's ``label_rollout`` (the rollout ends at its first
    success), ``model`` by the grounded LLM's ``judge``. What a KALM gain keeps beside this control is what
    the LLM's proposals add over an oracle picking lucky random ones.
    """

    name: ClassVar[str] = "random"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("random actions in the simulator from the same initial states, labelled "
                                  "like KALM's rollouts: the no-LLM control")

    class Config(StrictConfig):
        max_rollout_length: int | None = Field(None, ge=1, description="steps per rollout (default: the "
                                                                       "env's horizon)")

    def propose(self, ctx: ImagineContext) -> TrajectoryDataset:
        from kalm_bench.api import Episode, TrajectoryDataset

        env, cases = ctx.env, list(ctx.goals)
        env.require_imagination(ctx.level, cases, ctx.labels)
        pairs = self._play(ctx, cases, int(self.config.max_rollout_length or env.horizon))
        if ctx.labels == "model":
            if ctx.llm is None:
                raise UserError("model labels need a grounded LLM (an 'llm' section)", field="rollouts.labels")
            try:
                labels = ctx.llm.backend.judge(ctx.llm.path, env, ctx.level, cases, pairs)
            except NotImplementedError as exc:
                raise UserError(f"{exc}; use labels: oracle", field="rollouts.labels") from None
        else:
            labels = [env.label_rollout(ctx.level, case, s, a) for case, (s, a) in zip(cases, pairs)]
        episodes = []
        for case, (states, actions), lab in zip(cases, pairs, labels):
            end = int(lab.end)
            episodes.append(Episode(states=states[:end + 1], actions=actions[:end],
                                    rewards=np.asarray(lab.rewards, np.float32)[:end],
                                    instruction=str(case["instruction"]), goal=env.goal_of(case), level=ctx.level,
                                    success=bool(lab.success)))
        state_dim = int(pairs[0][0].shape[1]) if pairs else int(env.state_dim)
        return TrajectoryDataset.from_episodes(episodes, env=env.name, action_kind=env.action_kind,
                                               action_size=int(env.action_size), seed=ctx.seed, source="random",
                                               attrs={"labels": ctx.labels}, state_dim=state_dim)

    @staticmethod
    def _play(ctx: ImagineContext, cases: list[dict[str, Any]], horizon: int
              ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One random rollout per case."""
        gym_env = ctx.env.make(ctx.level)
        rng = np.random.default_rng(ctx.seed)
        gym_env.action_space.seed(int(rng.integers(2**31)))
        act_dtype = np.int64 if ctx.env.action_kind == "discrete" else np.float32
        pairs = []
        try:
            for k, case in enumerate(cases):
                obs, _ = gym_env.reset(seed=int(rng.integers(2**31)), options=case)
                states, actions = [np.asarray(obs, np.float32)], []
                for _ in range(horizon):
                    a = gym_env.action_space.sample()
                    obs, _, terminated, truncated, _ = gym_env.step(a)
                    states.append(np.asarray(obs, np.float32))
                    actions.append(a)
                    if terminated or truncated:
                        break
                pairs.append((np.stack(states), np.asarray(actions, act_dtype)))
                ctx.progress(k + 1, len(cases))
        finally:
            gym_env.close()
        return pairs


@hookimpl
def register_rollout_sources(register: Any) -> None:
    register(LLMSource)
    register(RandomSource)
