from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import kalm_reference  # noqa: E402
from refenv import RefClevr  # noqa: E402


@pytest.fixture(scope="session")
def ref_npy(tmp_path_factory) -> Path:
    """KALM's released clevr_robot.npy (pickled), written from the shipped pickle-free copy."""
    return kalm_reference.write_npy("clevr_robot", tmp_path_factory.mktemp("kalm-ref"))


@pytest.fixture(scope="session")
def ref_prompts_npy(tmp_path_factory) -> Path:
    """KALM's released clevr_rephrase_prompt.npy (pickled), written from the shipped pickle-free copy."""
    return kalm_reference.write_npy("clevr_rephrase_prompt", tmp_path_factory.mktemp("kalm-ref-prompts"))


@pytest.fixture(scope="session")
def ref_dataset(ref_npy):
    from kalm_bench_plugins.kalm.reference import load_clevr_dataset

    return load_clevr_dataset(ref_npy, trust_pickle=True, phrasings_per_trajectory=2, seed=0)


@pytest.fixture(scope="session")
def ref_env(ref_dataset, ref_prompts_npy):
    from kalm_bench_plugins.kalm.reference import load_clevr_prompts

    return RefClevr(ref_dataset, load_clevr_prompts(ref_prompts_npy, trust_pickle=True))
