"""Executing one stage: everything needed is in the stage's spec and its upstream artifacts.

This module is what a worker process runs, so it rebuilds plugin objects from names and configs
(``spec``) instead of receiving live objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import api
from .cache import ArtifactStore, atomic_write_text
from .datasets import TrajectoryDataset
from .plan import Stage
from .plugins import get_registry

Progress = Callable[[int, int], None]


@dataclass
class StageResult:
    key: str
    kind: str
    ok: bool
    built: bool
    error: str | None = None
    wall_s: float | None = None


def make_component(kind: str, spec: dict[str, Any]) -> Any:
    cls = get_registry().get(kind, spec["name"])
    return cls(cls.Config(**spec["config"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    if "torch" in sys.modules or os.environ.get("KALM_BENCH_SEED_TORCH", "1") == "1":
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency, but plugins may not need it
            return
        torch.manual_seed(seed)


class Encoded:
    """Instruction embeddings computed once per unique string, remembered on disk per encoder config.

    The file lives in the artifact store (``encodings/<hash of the encoder spec>.npz``) so every stage
    and every later run reuses embeddings instead of running the encoder again.
    """

    def __init__(self, encoder: api.TextEncoder, store: ArtifactStore | None = None,
                 spec: dict[str, Any] | None = None):
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}
        self.path = None
        if store is not None and spec is not None:
            from .cache import canonical_json

            digest = hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:24]
            self.path = store.root / "encodings" / f"{spec['name']}-{digest}.npz"
            self.cache.update(self._read())

    def _read(self) -> dict[str, np.ndarray]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as z:
                return dict(zip((str(t) for t in z["texts"]), z["vectors"]))
        except Exception:  # a corrupt cache is rebuilt, never fatal
            return {}

    def _write(self, new: dict[str, np.ndarray]) -> None:
        from filelock import FileLock

        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = {**self._read(), **new}
            texts = sorted(merged)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp.npz")
            np.savez(tmp, texts=np.array(texts, dtype=str), vectors=np.stack([merged[t] for t in texts]))
            os.replace(tmp, self.path)

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            vecs = np.asarray(self.encoder.encode(missing), np.float32)
            new = dict(zip(missing, vecs))
            self.cache.update(new)
            if self.path is not None:
                self._write(new)
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.encoder.dim), np.float32)


def to_transitions(ds: TrajectoryDataset, table: list[str], index: dict[str, int],
                   embeddings: np.ndarray) -> api.TransitionData:
    terminals, timeouts = ds.end_flags()
    ep_ids = ds.episode_index()
    instr_ids = np.array([index[str(t)] for t in ds.instructions], np.int64)[ep_ids] if ds.n_episodes \
        else np.zeros(0, np.int64)
    return api.TransitionData(states=ds.states, actions=ds.actions, rewards=ds.rewards,
                              next_states=ds.next_states, terminals=terminals, timeouts=timeouts,
                              instruction_ids=instr_ids, embeddings=embeddings, instructions=table,
                              episode_starts=ds.episode_starts)


def _load_dataset(store: ArtifactStore, key: str, kind: str) -> TrajectoryDataset:
    # ``store.entry`` has checked every file of the entry against its sha256, data.npz included.
    return TrajectoryDataset.load(store.entry(kind, key) / "dataset", verify=False)


def _dataset_shell(store: ArtifactStore, key: str, kind: str) -> TrajectoryDataset:
    """No episodes, but the shapes of a stored dataset: all that loading a policy needs."""
    m = json.loads((store.entry(kind, key) / "dataset" / "manifest.json").read_text())
    return TrajectoryDataset.from_episodes([], env=m["env"], action_kind=m["action_kind"],
                                           action_size=int(m["action_size"]), state_dim=int(m["state_dim"]))


def _train_inputs(stage_spec: dict[str, Any], deps: dict[str, str], store: ArtifactStore,
                  with_data: bool = True, env: api.Environment | None = None
                  ) -> tuple[api.Algorithm, api.TrainContext, Encoded]:
    """The algorithm and its context; ``with_data=False`` (evaluation) gives empty data of the right shapes.
    ``env`` replaces the training's env (built from the data options only), as evaluation does with its own."""
    env = env if env is not None else make_component("envs", stage_spec["env"])
    algo = make_component("algorithms", stage_spec["algorithm"])
    encoder = Encoded(make_component("encoders", stage_spec["encoder"]), store, stage_spec["encoder"])
    load = _load_dataset if with_data else _dataset_shell
    real = load(store, deps["dataset"], "dataset")
    imag = load(store, deps["rollouts"], "rollouts") if "rollouts" in deps else None
    table = sorted({str(t) for t in real.instructions} | ({str(t) for t in imag.instructions} if imag else set()))
    index = {t: i for i, t in enumerate(table)}
    emb = encoder(table) if table else np.zeros((0, encoder.encoder.dim), np.float32)
    real_td = to_transitions(real, table, index, emb)
    imag_td = to_transitions(imag, table, index, emb) if imag is not None and imag.n_transitions else None
    llm = None
    if "grounding" in deps and algo.needs_llm:
        gpath = store.entry("grounding", deps["grounding"])
        gspec = store.manifest("grounding", deps["grounding"])["spec"]
        llm = api.LLMHandle(make_component("llm_backends", gspec["backend"]), gpath / "model")
    ctx = api.TrainContext(
        config=algo.config, seed=int(stage_spec["seed"]), real=real_td, imaginary=imag_td,
        imaginary_fraction=float(stage_spec["imaginary_fraction"]) if imag_td is not None else 0.0,
        steps=int(stage_spec["steps"]), checkpoint_every=int(stage_spec["checkpoint_every"]),
        action_kind=real.action_kind, action_size=int(real.action_size), workdir=Path("."),
        save_checkpoint=lambda step, policy: None, llm=llm, env=env)
    return algo, ctx, encoder


def run_stage(stage: Stage, store: ArtifactStore, progress: Progress | None = None) -> dict[str, Any]:
    """Build ``stage``'s artifact (if not cached). Returns its manifest."""
    return build_stage(stage, store, progress)[0]


def build_stage(stage: Stage, store: ArtifactStore, progress: Progress | None = None,
                on_start: Callable[[], None] | None = None) -> tuple[dict[str, Any], bool]:
    """Build ``stage``'s artifact unless the cache has it intact: (its manifest, whether this call built it).

    ``on_start`` is called when the build itself starts (not for a cached entry, nor after waiting for
    another process that built it meanwhile). A training continues from the checkpoints a killed build of
    it left (see :func:`_build_train`).
    """
    progress = progress or (lambda done, total: None)
    builder = _BUILDERS[stage.kind]
    meta = {"label": stage.label, "spec": stage.spec, "deps": stage.deps, "versions": versions(spec_components(stage.spec))}

    def build(tmp: Path) -> dict[str, Any]:
        if on_start is not None:
            on_start()
        return builder(stage, store, tmp, progress)

    _, built = store.build(stage.kind, stage.key, build, meta, resumable=stage.kind == "train")
    return store.manifest(stage.kind, stage.key), built


def _build_dataset(stage: Stage, store: ArtifactStore, out: Path, progress: Progress) -> dict[str, Any]:
    spec = stage.spec
    if "path" in spec:
        # Data from outside: every check, including the suite's env (its name and action kind).
        ds = TrajectoryDataset.load(spec["path"], env=get_registry().get("envs", spec["env"]["name"]))
    else:
        env = make_component("envs", spec["env"])
        seed_everything(int(spec["seed"]))
        ds = env.generate_dataset(int(spec["episodes"]), int(spec["seed"]), progress, **spec["options"])
    ds.save(out / "dataset")
    return {"n_episodes": ds.n_episodes, "n_transitions": ds.n_transitions,
            "success_rate": float(np.mean(ds.success)) if ds.n_episodes else None}


def _build_grounding(stage: Stage, store: ArtifactStore, out: Path, progress: Progress) -> dict[str, Any]:
    spec = stage.spec
    env = make_component("envs", spec["env"])
    backend = make_component("llm_backends", spec["backend"])
    tasks = [get_registry().get("grounding_tasks", t["name"])() for t in spec["tasks"]]
    dataset = _load_dataset(store, stage.deps["dataset"], "dataset")
    seed_everything(int(spec["seed"]))
    (out / "model").mkdir()
    backend.ground(api.GroundingContext(dataset=dataset, env=env, tasks=tasks, seed=int(spec["seed"]),
                                        workdir=out / "model", progress=progress))
    return {}


def _build_diagnostics(stage: Stage, store: ArtifactStore, out: Path, progress: Progress) -> dict[str, Any]:
    """The grounded model measured at every level (goal match, plan success, explanation, ...)."""
    spec = stage.spec
    env = make_component("envs", spec["env"])
    backend = make_component("llm_backends", spec["backend"])
    dataset = _load_dataset(store, stage.deps["dataset"], "dataset")
    model_dir = store.entry("grounding", stage.deps["grounding"]) / "model"
    seed_everything(int(spec["seed"]))
    diagnostics = backend.diagnostics(model_dir, env, dataset, int(spec["seed"]))
    (out / "diagnostics.json").write_text(json.dumps(diagnostics, indent=2, sort_keys=True))
    return {"diagnostics": diagnostics}


def _build_rollouts(stage: Stage, store: ArtifactStore, out: Path, progress: Progress) -> dict[str, Any]:
    spec = stage.spec
    env = make_component("envs", spec["env"])
    source = make_component("rollout_sources", spec["source"])
    llm, model_dir = None, None
    if "grounding" in stage.deps:
        gpath = store.entry("grounding", stage.deps["grounding"])
        gspec = store.manifest("grounding", stage.deps["grounding"])["spec"]
        model_dir = gpath / "model"
        llm = api.LLMHandle(make_component("llm_backends", gspec["backend"]), model_dir)
    seed = int(spec["seed"])
    goals = env.sample_goals(spec["level"], int(spec["count"]), seed)
    seed_everything(seed)
    proposed = source.propose(api.ImagineContext(model_dir=model_dir, env=env, level=spec["level"], goals=goals,
                                                 seed=seed, labels=spec["labels"], progress=progress, llm=llm))
    ds, figures = filter_rollouts(proposed, env, keep=spec["keep"], realistic=spec["realistic"])
    ds.save(out / "dataset")
    scalars = {k: v for k, v in proposed.attrs.items() if isinstance(v, (int, float, str, bool))}
    return {"n_episodes": ds.n_episodes, "n_transitions": ds.n_transitions, **figures, "attrs": scalars}


def filter_rollouts(ds: TrajectoryDataset, env: api.Environment, keep: str, realistic: bool
                    ) -> tuple[TrajectoryDataset, dict[str, Any]]:
    """Apply the suite's rollout filters; the figures describe what the source proposed and what was kept.

    ``goal_match_rate`` is the share of proposed rollouts labelled successful; ``realistic_rate`` the share
    whose every state passes the env's realism check and ``realistic_goal_match_rate`` the share that are
    both (None when the env declares no check).
    """
    n = ds.n_episodes
    success = np.asarray(ds.success, bool)
    real_ok = realistic_episodes(ds, env)
    figures: dict[str, Any] = {
        "n_proposed": n, "goal_match_rate": float(success.mean()) if n else None,
        "realistic_rate": float(real_ok.mean()) if real_ok is not None and n else None,
        "realistic_goal_match_rate": float((real_ok & success).mean()) if real_ok is not None and n else None,
        "keep": keep, "realistic": realistic}
    mask = np.ones(n, bool)
    if keep == "success":
        mask &= success
    if realistic:
        assert real_ok is not None  # the plan refuses the filter for an env without a check
        mask &= real_ok
    if mask.all():
        return ds, figures
    episodes = [ds.episode(i) for i in np.nonzero(mask)[0]]
    kept = TrajectoryDataset.from_episodes(episodes, env=ds.env, action_kind=ds.action_kind,
                                           action_size=int(ds.action_size), seed=ds.seed, source=ds.source,
                                           attrs=ds.attrs, state_dim=ds.state_dim)
    return kept, figures


def realistic_episodes(ds: TrajectoryDataset, env: api.Environment) -> np.ndarray | None:
    """Per episode: does every state of it pass the env's realism check? None when the env has no check."""
    if env.realistic_states(np.zeros((0, ds.state_dim), np.float32)) is None:
        return None
    return np.array([bool(np.asarray(env.realistic_states(e.states), bool).all()) for e in ds.episodes()], bool)


TRAIN_STATE = "train_state.json"


def _build_train(stage: Stage, store: ArtifactStore, out: Path, progress: Progress) -> dict[str, Any]:
    """Train, saving each checkpoint as it comes.

    ``out`` is kept when the build is killed, and handed to the next build of the same training: the
    checkpoints already saved stay (a checkpoint is written aside and renamed, so it is whole or absent),
    ``train_state.json`` keeps the training log up to the last checkpoint, and ``ctx.workdir`` keeps what
    the algorithm wrote there. An algorithm that stores its training state in ``ctx.workdir`` at each
    checkpoint continues from there; one that does not trains again from the start, and every checkpoint it
    saves again replaces the earlier one of that step.
    """
    t0 = time.time()
    algo, ctx, _ = _train_inputs(stage.spec, stage.deps, store)
    ckpt_root = out / "checkpoints"
    ckpt_root.mkdir(exist_ok=True)
    for leftover in ckpt_root.glob(".*"):  # a checkpoint a killed build was writing
        shutil.rmtree(leftover, ignore_errors=True)
    saved = sorted(int(p.name) for p in ckpt_root.iterdir() if p.is_dir() and p.name.isdigit())
    train_log: list[dict[str, float]] = []
    earlier_s = 0.0
    state_file = out / TRAIN_STATE
    if saved and state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
            train_log = [e for e in state["train_log"] if int(e["step"]) <= saved[-1]]
            earlier_s = float(state.get("wall_s", 0.0))
        except (ValueError, KeyError, TypeError):  # unreadable: the log restarts with the algorithm
            train_log = []
    resumed_from = saved[-1] if saved else None

    def save_state() -> None:
        atomic_write_text(state_file, json.dumps({"train_log": train_log,
                                                  "wall_s": earlier_s + time.time() - t0}))

    def save_checkpoint(step: int, policy: api.Policy) -> None:
        step = int(step)
        d = ckpt_root / f"{step:09d}"
        part = ckpt_root / f".{d.name}.partial"
        if part.exists():
            shutil.rmtree(part)
        part.mkdir()
        policy.save(part)
        if d.exists():  # saved again after a resume: the new one replaces it
            shutil.rmtree(d)
        os.replace(part, d)
        if step not in saved:
            saved.append(step)
            saved.sort()
        save_state()

    def log(step: int, metrics: dict[str, float]) -> None:
        # Entries from a killed attempt past the point the algorithm continues from are replaced.
        train_log[:] = [e for e in train_log if int(e["step"]) < int(step)]
        train_log.append({"step": int(step), **{k: float(v) for k, v in metrics.items()}})

    ctx.workdir = out / "work"
    ctx.workdir.mkdir(exist_ok=True)
    ctx.save_checkpoint = save_checkpoint
    ctx.progress = progress
    ctx.log = log
    seed_everything(ctx.seed)
    algo.train(ctx)
    if not saved:
        raise RuntimeError(f"algorithm {algo.name!r} saved no checkpoint")
    state_file.unlink(missing_ok=True)
    return {"checkpoints": saved, "train_log": train_log, "train_transitions": len(ctx.real),
            "imaginary_transitions": len(ctx.imaginary) if ctx.imaginary is not None else 0,
            "resumed_from_checkpoint": resumed_from, "wall_s": earlier_s + time.time() - t0}


def _build_eval(stage: Stage, store: ArtifactStore, out: Path, progress: Progress) -> dict[str, Any]:
    spec = stage.spec
    tpath = store.entry("train", stage.deps["train"])
    tstage = store.manifest("train", stage.deps["train"])
    env = make_component("envs", spec["env"])  # with the options evaluation reads, not only the data's
    algo, ctx, encoder = _train_inputs(tstage["spec"], tstage["deps"], store, with_data=False, env=env)
    level = spec["level"]
    n = spec["episodes"]
    cases = env.test_cases(level, None if n is None else int(n), int(spec["seed"]))
    curve = []
    steps = tstage["checkpoints"]
    # Only the scored checkpoints (the final part of training) unless the suite asks for whole curves.
    if spec.get("checkpoints", "all") != "all":
        steps = steps[-int(spec["checkpoints"]):]
    for i, step in enumerate(steps):
        policy = algo.load_policy(tpath / "checkpoints" / f"{step:09d}", ctx)
        res = env.evaluate(policy, level, cases, int(spec["seed"]), embed=encoder,
                           batch_size=int(spec["batch_size"]),
                           progress=lambda d, t, i=i: progress(i * t + d, len(steps) * t))
        curve.append({"step": step, "success_rate": res.success_rate, "return_mean": float(np.mean(res.returns)),
                      "length_mean": float(np.mean(res.lengths))})
    (out / "curve.json").write_text(json.dumps(curve, indent=2))
    return {"curve": curve, "n_cases": len(cases)}


_BUILDERS = {"dataset": _build_dataset, "grounding": _build_grounding, "diagnostics": _build_diagnostics,
             "rollouts": _build_rollouts, "train": _build_train, "eval": _build_eval}


# Stage-spec sections that name a component, and their registry kind.
COMPONENT_SECTIONS = {"env": "envs", "algorithm": "algorithms", "backend": "llm_backends", "encoder": "encoders",
                      "source": "rollout_sources"}


def spec_components(spec: dict[str, Any]) -> list[type]:
    """The registered classes a stage spec names (its env, algorithm, LLM backend, encoder, rollout source)."""
    reg = get_registry()
    out = []
    for section, kind in COMPONENT_SECTIONS.items():
        value = spec.get(section)
        if isinstance(value, dict) and value.get("name") in reg.names(kind):
            out.append(reg.get(kind, value["name"]))
    return out


def versions(components: Iterable[type] = ()) -> dict[str, str | None]:
    """Versions of Python, kalm-bench, numpy, the distributions that install the ``components`` and the
    libraries they declare (``libraries``), without importing them."""
    import importlib.metadata as md
    import platform

    components = list(components)
    out: dict[str, str | None] = {"python": platform.python_version()}
    # The distribution that installs each component (a third-party plugin's), then the libraries it declares.
    by_module = md.packages_distributions() if components else {}
    plugin_dists = [d for cls in components for d in by_module.get(cls.__module__.split(".")[0], [])[:1]]
    names = ["kalm-bench", "numpy"] + plugin_dists + [lib for cls in components for lib in cls.libraries]
    for dist in dict.fromkeys(names):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out
