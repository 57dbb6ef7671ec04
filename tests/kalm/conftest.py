from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from refenv import RefClevr  # noqa: E402


@pytest.fixture(scope="session")
def ref_dataset(kalm_npy):
    from kalm_bench_plugins.kalm.reference import load_clevr_dataset

    return load_clevr_dataset(kalm_npy, trust_pickle=True, phrasings_per_trajectory=2, seed=0)


@pytest.fixture(scope="session")
def ref_env(ref_dataset, kalm_prompt_npy):
    from kalm_bench_plugins.kalm.reference import load_clevr_prompts

    return RefClevr(ref_dataset, load_clevr_prompts(kalm_prompt_npy, trust_pickle=True))
