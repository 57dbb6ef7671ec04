"""Helpers for the Decision Transformer tests: data conversion and a TrainContext that saves like the core."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kalm_bench.api import StrictConfig, TrainContext, TransitionData
from kalm_bench.datasets import TrajectoryDataset
from kalm_bench.stages import to_transitions as core_to_transitions


def to_transitions(ds: TrajectoryDataset, embed) -> TransitionData:
    """What the core's stage graph hands to ``Algorithm.train`` (one embedding row per unique instruction)."""
    table = sorted({str(t) for t in ds.instructions})
    index = {t: i for i, t in enumerate(table)}
    return core_to_transitions(ds, table, index, np.asarray(embed(table), np.float32))


def synthetic(n_eps: int = 30, length: int = 12, state_dim: int = 5, emb_dim: int = 4, n_instr: int = 3,
              kind: str = "discrete", action_size: int = 4, seed: int = 0, vary: bool = True) -> TransitionData:
    """Random episodes of varying length (some shorter than a DT context), rewards 1 at goal steps."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, n_eps) if vary else np.full(n_eps, length)
    n = int(lengths.sum())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ends = starts + lengths - 1
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    terminals[ends[0::2]] = 1.0
    timeouts[ends[1::2]] = 1.0
    rewards = rng.normal(size=n).astype(np.float32)
    actions = (rng.integers(0, action_size, n).astype(np.int64) if kind == "discrete"
               else rng.uniform(-1, 1, (n, action_size)).astype(np.float32))
    states = rng.normal(size=(n, state_dim)).astype(np.float32)
    return TransitionData(
        states=states, actions=actions, rewards=rewards, next_states=np.roll(states, -1, 0),
        terminals=terminals, timeouts=timeouts,
        instruction_ids=np.repeat(rng.integers(0, n_instr, n_eps), lengths).astype(np.int64),
        embeddings=rng.normal(size=(n_instr, emb_dim)).astype(np.float32),
        instructions=[f"instruction {i}" for i in range(n_instr)], episode_starts=starts)


def make_ctx(algo, data: TransitionData, tmp_path: Path, *, steps: int = 20, every: int = 10, seed: int = 0,
             imaginary: TransitionData | None = None, fraction: float = 0.5, kind: str | None = None,
             action_size: int | None = None, env=None) -> tuple[TrainContext, dict[int, Path], list]:
    saved: dict[int, Path] = {}
    progress: list[tuple[int, int]] = []
    kind = kind or ("discrete" if data.actions.ndim == 1 else "continuous")
    size = action_size or (int(data.actions.max()) + 1 if kind == "discrete" else data.actions.shape[1])

    def save(step: int, policy) -> None:
        path = tmp_path / f"ckpt-{step}"
        path.mkdir(parents=True)
        policy.save(path)
        saved[step] = path

    ctx = TrainContext(config=algo.config if algo is not None else StrictConfig(), seed=seed, real=data,
                       imaginary=imaginary, imaginary_fraction=fraction, steps=steps, checkpoint_every=every,
                       action_kind=kind, action_size=size, workdir=tmp_path, save_checkpoint=save,
                       progress=lambda d, t: progress.append((d, t)), env=env)
    return ctx, saved, progress


def run_cli(*args: str, env: dict | None = None, check: bool = False):
    """The real command line in a subprocess (like tests/conftest.py's, which this directory cannot import
    by name: its own conftest shadows it)."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "kalm_bench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


# ---------------------------------------------------------------------------------------------------------
# The LLM baselines (llm-policy, llm-dt): a tiny grounded model, the KALM tasks, a backend that can do neither


TINY_EMBEDDED = {"d_model": 32, "layers": 2, "heads": 2, "epochs": 2, "diagnostics_explain": 0,
                 "diagnostics_goals": 0, "threads": 1}


def kalm_tasks() -> list:
    from kalm_bench_plugins.kalm import tasks as T

    return [t() for t in T.TASKS]


def kalm_hf_test_module():
    """tests/kalm/test_hf_local.py, loaded by path: its ``make_tiny_llama`` and ``SMALL`` build the random
    Llama those tests ground (no downloads)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "kalm" / "test_hf_local.py"
    spec = importlib.util.spec_from_file_location("_kalm_hf_test_module", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def mute_backend():
    """An LLM backend that grounds and imagines nothing, and so can neither act nor lend a backbone."""
    from kalm_bench.api import LLMBackend

    class Mute(LLMBackend):
        name = "mute"

        def ground(self, ctx):
            pass

        def imagine(self, ctx):
            pass

    return Mute()
