"""Test-only plugins for the core tests: small but real implementations of every plugin type.

``line-world``: a ball on positions 0..9 must reach a target; actions 0 = left, 1 = right, 2 = stay.
Levels: ``seen`` (targets named by number), ``rephrase`` (other wording) and ``far`` (targets 8-9, absent
from the offline data). ``tabular-bc`` learns the majority action per (state, instruction embedding).
Loaded through ``KALM_BENCH_PLUGIN_MODULES=kb_testplugins`` (tests/ is on PYTHONPATH).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from kalm_bench import hookimpl
from kalm_bench.api import (
    Algorithm,
    Environment,
    GroundingTask,
    LLMBackend,
    Policy,
    PolicyBatch,
    RolloutLabels,
    StrictConfig,
    TextEncoder,
    TrainContext,
)
from kalm_bench.datasets import Episode, TrajectoryDataset

N_POS = 10
WORDS = {"seen": "move the ball to cell {t}", "rephrase": "please bring the ball over to square {t}",
         "far": "go all the way to cell {t}"}


def _instruction(level: str, target: int) -> str:
    return WORDS[level].format(t=target)


class _LineEnv:
    """Minimal Gymnasium env (imported lazily: gymnasium is only needed when an env is made)."""

    def __new__(cls, level: str, horizon: int):
        import gymnasium as gym

        class LineEnv(gym.Env):
            def __init__(self):
                self.observation_space = gym.spaces.Box(0, N_POS - 1, (1,), np.float32)
                self.action_space = gym.spaces.Discrete(3)
                self.level, self.horizon = level, horizon

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                case = options or _sample_case(self.level, self.np_random)
                self.pos, self.target, self.t = int(case["initial_state"][0]), int(case["goal"]), 0
                self.instruction = case["instruction"]
                return np.array([self.pos], np.float32), self._info()

            def _info(self):
                return {"is_success": self.pos == self.target, "instruction": self.instruction,
                        "goal": self.target, "level": self.level}

            def step(self, action):
                self.pos = int(np.clip(self.pos + (-1, 1, 0)[int(action)], 0, N_POS - 1))
                self.t += 1
                ok = self.pos == self.target
                return np.array([self.pos], np.float32), (100.0 if ok else -1.0), ok, self.t >= self.horizon, self._info()

        return LineEnv()


def _sample_case(level: str, rng) -> dict[str, Any]:
    targets = [8, 9] if level == "far" else list(range(0, 8))
    target = int(rng.choice(targets))
    start = int(rng.integers(0, N_POS))
    while start == target:
        start = int(rng.integers(0, N_POS))
    return {"initial_state": [start], "goal": target, "instruction": _instruction(level, target), "level": level}


class LineWorld(Environment):
    name = "line-world"
    version = "1"
    description = "test env: move a ball along 10 cells"
    levels = {"seen": "targets 0-7", "rephrase": "targets 0-7, other wording", "far": "targets 8-9"}
    action_kind = "discrete"
    action_size = 3
    state_dim = 1
    horizon = 12
    case_fields = ("instruction", "initial_state", "goal", "level")
    can_label = True

    class Config(StrictConfig):
        noise: float = 0.0
        unrealistic_cell: int | None = None  # the realism check rejects states on this cell
        wording: dict[str, str] = {}  # level → instruction template ("{t}" is the target) of its cases
        case_offset: int = 0  # shifts the seed of the test cases

    option_scopes = {"unrealistic_cell": "imagination", "case_offset": "evaluation"}
    level_options = ("wording",)

    def make(self, level: str):
        return _LineEnv(level, self.horizon)

    def realistic_states(self, states):
        return np.asarray(states)[:, 0] != (-1 if self.config.unrealistic_cell is None else self.config.unrealistic_cell)

    def generate_dataset(self, n_episodes, seed, progress=lambda d, t: None, **options):
        if options.get("fail"):
            raise RuntimeError("generation failed on purpose")
        rng = np.random.default_rng(seed)
        eps = []
        for i in range(n_episodes):
            case = _sample_case("seen", rng)
            eps.append(self._expert_episode(case, rng))
            progress(i + 1, n_episodes)
        return TrajectoryDataset.from_episodes(eps, env=self.name, action_kind="discrete", action_size=3,
                                               seed=seed, source="scripted expert")

    def _expert_episode(self, case, rng, level="seen"):
        pos, target = case["initial_state"][0], case["goal"]
        states, actions, rewards = [[pos]], [], []
        for _ in range(self.horizon):
            a = 1 if target > pos else 0
            if rng.random() < self.config.noise:
                a = int(rng.integers(0, 3))
            pos = int(np.clip(pos + (-1, 1, 0)[a], 0, N_POS - 1))
            states.append([pos])
            actions.append(a)
            rewards.append(100.0 if pos == target else -1.0)
            if pos == target:
                break
        return Episode(np.array(states, np.float32), np.array(actions), np.array(rewards), case["instruction"],
                       target, level, pos == target)

    def test_cases(self, level, n=None, seed=0):
        rng = np.random.default_rng(seed + 1000 + self.config.case_offset)
        return [self._worded(_sample_case(level, rng)) for _ in range(20 if n is None else n)]

    def sample_goals(self, level, n, seed):
        rng = np.random.default_rng(seed + 1000)
        return [self._worded(_sample_case(level, rng)) for _ in range(n)]

    def _worded(self, case):
        template = self.config.wording.get(case["level"])
        return case if template is None else {**case, "instruction": template.format(t=case["goal"])}

    def label_rollout(self, level, case, states, actions):
        hit = np.nonzero(states[1:, 0] == case["goal"])[0]
        end = int(hit[0]) + 1 if len(hit) else len(actions)
        rewards = np.where(states[1:end + 1, 0] == case["goal"], 100.0, -1.0).astype(np.float32)
        return RolloutLabels(rewards=rewards, end=end, success=bool(len(hit)))


class HashEncoder(TextEncoder):
    """Feature hashing of words: deterministic and model-free (test-only)."""

    name = "hash"
    version = "1"
    description = "test encoder: hashed bag of words"

    class Config(StrictConfig):
        size: int = 16

    @property
    def dim(self) -> int:
        return self.config.size

    def encode(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out


class TablePolicy(Policy):
    def __init__(self, table: dict[str, int], fallback: int = 2):
        self.table, self.fallback = table, fallback

    @staticmethod
    def key(obs_row: np.ndarray) -> str:
        return ",".join(f"{v:.3f}" for v in obs_row)

    def act(self, batch: PolicyBatch) -> np.ndarray:
        return np.array([self.table.get(self.key(o), self.fallback) for o in batch.observations], np.int64)

    def save(self, path: Path) -> None:
        (path / "table.json").write_text(json.dumps({"table": self.table, "fallback": self.fallback}))


class TabularBC(Algorithm):
    """Majority action per observation, learned from the first ``steps × batch`` sampled transitions."""

    name = "tabular-bc"
    version = "1"
    description = "test algorithm: majority action per observation"
    action_kinds = ("discrete",)
    presets = {"tiny": {"batch_size": 4}}

    class Config(StrictConfig):
        batch_size: int = 32
        sleep_s: float = 0.0
        fail: bool = False

    def train(self, ctx: TrainContext) -> None:
        if self.config.fail:
            raise RuntimeError("training failed on purpose")
        rng = np.random.default_rng(ctx.seed)
        counts: dict[str, np.ndarray] = {}
        obs_real = ctx.real.observations
        obs_imag = ctx.imaginary.observations if ctx.imaginary is not None else None
        done = 0
        for step in ctx.checkpoint_steps():
            while done < step:
                n_imag = int(round(self.config.batch_size * ctx.imaginary_fraction)) if obs_imag is not None else 0
                for obs, acts, n in ((obs_real, ctx.real.actions, self.config.batch_size - n_imag),
                                     (obs_imag, ctx.imaginary.actions if ctx.imaginary else None, n_imag)):
                    if n == 0:
                        continue
                    for i in rng.integers(0, len(obs), n):
                        counts.setdefault(TablePolicy.key(obs[i]), np.zeros(ctx.action_size))[acts[i]] += 1
                done += 1
                ctx.progress(done, ctx.steps)
            if self.config.sleep_s:
                time.sleep(self.config.sleep_s)
            ctx.log(step, {"table_size": len(counts)})
            ctx.save_checkpoint(step, TablePolicy({k: int(np.argmax(v)) for k, v in counts.items()}))

    def load_policy(self, path: Path, ctx: TrainContext) -> Policy:
        d = json.loads((path / "table.json").read_text())
        return TablePolicy(d["table"], d["fallback"])


class ScriptedGrounding(GroundingTask):
    name = "scripted"
    version = "1"
    description = "test grounding task: (instruction, start, goal) triples"

    def examples(self, dataset, rng):
        return [{"instruction": str(t)} for t in dataset.instructions]


class ScriptedLLM(LLMBackend):
    """'Grounds' by remembering the words for each target; imagines with the expert (test-only)."""

    name = "scripted-llm"
    version = "1"
    description = "test LLM backend"

    class Config(StrictConfig):
        accuracy: float = 1.0

    def ground(self, ctx):
        examples = [e for t in ctx.tasks for e in t.examples(ctx.dataset, np.random.default_rng(ctx.seed))]
        (ctx.workdir / "model.json").write_text(json.dumps({"n_examples": len(examples)}))

    def imagine(self, ctx):
        rng = np.random.default_rng(ctx.seed)
        env = ctx.env
        eps = []
        for case in ctx.goals:
            ep = env._expert_episode(case, rng, level=ctx.level)
            if rng.random() > self.config.accuracy:
                ep.actions = np.zeros_like(ep.actions)
            lab = env.label_rollout(ctx.level, case, ep.states, ep.actions)
            ep.success = lab.success
            eps.append(ep)
        return TrajectoryDataset.from_episodes(eps, env=env.name, action_kind="discrete", action_size=3,
                                               seed=ctx.seed, source="scripted-llm")

    def diagnostics(self, model_dir, env, dataset, seed):
        return {"explain_acc_seen": 1.0, "n_examples": float(json.loads((model_dir / "model.json").read_text())["n_examples"])}


@hookimpl
def register_envs(register):
    register(LineWorld)


@hookimpl
def register_algorithms(register):
    register(TabularBC)


@hookimpl
def register_encoders(register):
    register(HashEncoder)


@hookimpl
def register_llm_backends(register):
    register(ScriptedLLM)


@hookimpl
def register_grounding_tasks(register):
    register(ScriptedGrounding)


# Crash injection for the resume test: KB_TEST_KILL_AFTER_TRAINS=N kills the process (no cleanup, like
# SIGKILL) when the N+1-th training starts.
_kill_after = os.environ.get("KB_TEST_KILL_AFTER_TRAINS")
if _kill_after is not None:
    _orig_train = TabularBC.train

    def _train_then_maybe_die(self, ctx):
        counter = Path(os.environ["KB_TEST_COUNTER"])
        n = int(counter.read_text()) if counter.exists() else 0
        if n >= int(_kill_after):
            if os.environ.get("KALM_BENCH_WORKER") == "1":  # a worker process: kill the whole run
                import signal

                os.kill(os.getppid(), signal.SIGKILL)
            os._exit(137)
        counter.write_text(str(n + 1))
        return _orig_train(self, ctx)

    TabularBC.train = _train_then_maybe_die
