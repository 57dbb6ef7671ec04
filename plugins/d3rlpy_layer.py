"""The d3rlpy layer that the d3rlpy-based first-party plugins share (``offline_rl``'s algorithms and
``baselines``' Decision Transformers): seeding, the training state that lets a killed training resume
bit-identically, saved-policy files, the real/imaginary batch split and the input checks.

It is a declared, documented module rather than one plugin reaching into another: both plugins depend on
it, and it depends only on ``kalm_bench.api``, d3rlpy and torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import random
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import d3rlpy
import numpy as np
import torch
from d3rlpy.base import LearnableConfigWithShape
from d3rlpy.models.encoders import VectorEncoderFactory
from d3rlpy.torch_utility import map_location

from kalm_bench.api import TrainContext, UserError

if TYPE_CHECKING:  # pragma: no cover
    from d3rlpy.algos.qlearning.base import QLearningAlgoBase

META_FILE = "policy.json"
LOG = logging.getLogger("kalm_bench")


# -------------------------------------------------------------------------------------------------------
# d3rlpy configs


# The config's scaler names → d3rlpy scalers (unfitted: ``train`` fits them on the training data).
OBSERVATION_SCALERS = {"none": lambda: None, "standard": d3rlpy.preprocessing.StandardObservationScaler,
                       "min_max": d3rlpy.preprocessing.MinMaxObservationScaler}


@functools.cache
def d3rlpy_fields(config_name: str) -> tuple[str, ...]:
    """Every field of the d3rlpy config dataclass ``d3rlpy.algos.<config_name>`` (read from d3rlpy itself)."""
    return tuple(f.name for f in dataclasses.fields(getattr(d3rlpy.algos, config_name)))


def build_d3rlpy_config(cfg: Any) -> Any:
    """The d3rlpy config of a plugin config ``cfg`` (a pydantic model with the ClassVar ``d3rlpy_config``,
    the name of the d3rlpy dataclass, and the classmethod ``passed_fields()``, the d3rlpy fields it sets
    or passes through): d3rlpy defaults < the plugin's options of the same names < the ``d3rlpy``
    overrides. An ``encoder_factory`` field gets a ReLU MLP of ``cfg.hidden_units``."""
    cls = getattr(d3rlpy.algos, cfg.d3rlpy_config)
    passed = cfg.passed_fields()
    own = {k: getattr(cfg, k) for k in type(cfg).model_fields if k in passed}
    for k in passed:
        if k.endswith("encoder_factory"):
            own[k] = VectorEncoderFactory(hidden_units=list(cfg.hidden_units), activation="relu")
    # Set last: d3rlpy cannot serialise a scaler before it is fitted, and the overrides go through JSON.
    # A config that does not pass the option (trajectory models fed hand-built batches) gets none.
    scaler = OBSERVATION_SCALERS[cfg.observation_scaler]() if "observation_scaler" in passed else None
    own.pop("observation_scaler", None)
    base = cls(**own)
    if cfg.d3rlpy:
        values = base.serialize_to_dict()
        for key, value in cfg.d3rlpy.items():
            trial = dict(values, **{key: value})
            try:
                cls.deserialize_from_dict(trial)
            except Exception as exc:  # dataclasses_json raises a zoo of types for a bad value
                raise ValueError(f"d3rlpy.{key}: invalid value {value!r} for d3rlpy {cfg.d3rlpy_config} "
                                 f"({type(exc).__name__}: {exc})") from None
            values = trial
        base = cls.deserialize_from_dict(values)
    return dataclasses.replace(base, observation_scaler=scaler) if scaler is not None else base


def check_d3rlpy_config(config_json: str, mpath: Path, device: str) -> None:
    try:
        LearnableConfigWithShape.deserialize(config_json).config.create(device=device)
    except Exception as exc:
        raise UserError(f"unreadable d3rlpy config ({type(exc).__name__}: {exc})", file=mpath,
                        field="d3rlpy_config") from None


# -------------------------------------------------------------------------------------------------------
# Saved policies


def write_policy_files(path: Path, state: Any, meta: dict[str, Any], config_json: str, fmt: str,
                       weights_file: str) -> None:
    """Weights (``torch.save`` of tensors only, loaded with ``weights_only=True``) plus JSON metadata."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / weights_file)
    meta = dict(meta, format=fmt, d3rlpy_version=d3rlpy.__version__, d3rlpy_config=json.loads(config_json))
    (path / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def read_policy_meta(mpath: Path, fmt: str, what: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The checked JSON metadata of a saved policy (shared with other d3rlpy-based plugins)."""
    try:
        meta = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise UserError("policy metadata is missing", file=mpath) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt policy metadata ({exc.msg} at line {exc.lineno})", file=mpath) from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise UserError(f"not a {what} written by kalm-bench (format={found!r})", file=mpath, field="format")
    for key in required:
        if key not in meta:
            raise UserError(f"field {key} is missing", file=mpath, field=key)
    return meta


def policy_device(meta: dict[str, Any], device: str | None) -> str:
    """The requested device, else the one the policy was trained on, falling back to CPU without CUDA."""
    if device is None:
        device = str(meta.get("device", "cpu:0"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu:0"
    return device


# -------------------------------------------------------------------------------------------------------
# Seeding and resuming


def seed_everything(seed: int) -> None:
    d3rlpy.seed(seed)  # random, numpy, torch (+ cudnn deterministic)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# -------------------------------------------------------------------------------------------------------
# Resuming a killed training
#
# At every checkpoint the trainers also write ``resume.pt`` into ``ctx.workdir``: the step, the weights and
# optimizer (and learning-rate scheduler) states, the sampler's RNG and the global RNGs (Python, numpy, torch,
# CUDA), and the running loss windows. The core keeps the workdir of a killed training and hands it to the
# next build of the same training, which loads the file and continues after that step, drawing the same
# batches and noise as an uninterrupted run. It is deleted when training ends.

RESUME_FILE = "resume.pt"
RESUME_FORMAT = 1


def rng_state() -> dict[str, Any]:
    """The global RNG states, in types ``torch.load(weights_only=True)`` reads back."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resume_identity(algorithm: Any, ctx: TrainContext) -> dict[str, Any]:
    """What must be the same for a saved training state to be continued."""
    config = algorithm.config.model_dump(mode="json")
    return {"format": RESUME_FORMAT, "algorithm": algorithm.name, "algorithm_version": algorithm.version,
            "config": json.dumps(config, sort_keys=True, default=str), "seed": int(ctx.seed),
            "steps": int(ctx.steps), "checkpoint_every": int(ctx.checkpoint_every),
            "real": len(ctx.real), "imaginary": len(ctx.imaginary) if ctx.imaginary is not None else 0}


def save_training_state(algorithm: Any, ctx: TrainContext, step: int, state: dict[str, Any]) -> None:
    """Write ``resume.pt`` (atomically: a killed write leaves the previous one)."""
    path = Path(ctx.workdir) / RESUME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{RESUME_FILE}.tmp")
    torch.save({"identity": _resume_identity(algorithm, ctx), "step": int(step), "rng": rng_state(), **state}, tmp)
    os.replace(tmp, path)


def load_training_state(algorithm: Any, ctx: TrainContext, device: str) -> dict[str, Any] | None:
    """The state ``save_training_state`` left in ``ctx.workdir``, if it is one of this training."""
    path = Path(ctx.workdir) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location=map_location(device), weights_only=True)
    except Exception as exc:  # a damaged file: train from the start
        LOG.warning("cannot read the saved training state %s (%s: %s); training from the start", path,
                    type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("identity") != _resume_identity(algorithm, ctx):
        LOG.warning("the saved training state %s is of another training; training from the start", path)
        return None
    if not 0 < int(state.get("step", 0)) <= ctx.steps:
        return None
    return state


def continue_training(algorithm: Any, ctx: TrainContext, algo: Any, sampler: Any,
                      device: str) -> tuple[int, dict[str, deque[float]]]:
    """Load the state a killed build of this training saved into the d3rlpy ``algo`` (weights, optimizers,
    step counters) and the ``sampler`` (its RNG), and restore the global RNGs. Returns the first step to
    run and the loss windows: ``(1, {})`` when there is nothing to continue."""
    resume = load_training_state(algorithm, ctx, device)
    if resume is None:
        return 1, {}
    load_module_states(algo, resume["modules"])
    algo.set_grad_step(int(resume["grad_step"]))
    set_impl_counters(algo, resume.get("counters", {}))
    sampler.rng.bit_generator.state = resume["sampler_rng"]
    losses = {k: deque(v, maxlen=1000) for k, v in resume["losses"].items()}
    set_rng_state(resume["rng"])
    first = int(resume["step"]) + 1
    LOG.info("  continuing %s from its checkpoint at step %d", algorithm.name, first - 1)
    ctx.progress(first - 1, ctx.steps)
    return first, losses


def end_training_state(ctx: TrainContext) -> None:
    (Path(ctx.workdir) / RESUME_FILE).unlink(missing_ok=True)


def module_states(algo: QLearningAlgoBase) -> dict[str, Any]:
    """Weights, target networks and optimizer states of a d3rlpy algorithm (what ``save_model`` writes)."""
    modules = algo.impl.modules.create_checkpointer(algo.impl.device).modules
    return {k: v.state_dict() for k, v in modules.items()}


def load_module_states(algo: QLearningAlgoBase, states: dict[str, Any]) -> None:
    modules = algo.impl.modules.create_checkpointer(algo.impl.device).modules
    if set(modules) != set(states):
        raise ValueError(f"saved modules {sorted(states)} do not match {sorted(modules)}")
    for k, v in modules.items():
        v.load_state_dict(states[k])


# Training counters d3rlpy keeps on the implementation outside its modules (DiscreteDecisionTransformer's
# learning-rate schedule counts tokens).
_IMPL_COUNTERS = ("_tokens",)


def impl_counters(algo: Any) -> dict[str, int]:
    return {k: int(getattr(algo.impl, k)) for k in _IMPL_COUNTERS if hasattr(algo.impl, k)}


def set_impl_counters(algo: Any, counters: dict[str, int]) -> None:
    for k, v in counters.items():
        if k in _IMPL_COUNTERS and hasattr(algo.impl, k):
            setattr(algo.impl, k, int(v))


# -------------------------------------------------------------------------------------------------------
# Inputs and batches


def check_train_inputs(algorithm: Any, ctx: TrainContext) -> None:
    """Fail early, naming the suite field, on data this algorithm cannot train on."""
    if ctx.action_kind not in algorithm.action_kinds:
        raise UserError(f"algorithm {algorithm.name!r} needs {' or '.join(algorithm.action_kinds)} actions, "
                        f"the environment has {ctx.action_kind} ones", field="algorithms")
    if len(ctx.real) == 0:
        raise UserError("the real dataset has no transitions", field="data")


def split_batch(batch_size: int, imaginary_fraction: float, has_imaginary: bool) -> tuple[int, int]:
    """Rows per batch from (real, imaginary): all real without imaginary data."""
    if not has_imaginary or imaginary_fraction <= 0:
        return batch_size, 0
    n_imag = int(round(batch_size * float(imaginary_fraction)))
    n_imag = min(max(n_imag, 1), batch_size)
    return batch_size - n_imag, n_imag
