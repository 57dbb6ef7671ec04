from pathlib import Path

import pytest

import kalm_reference


@pytest.fixture(scope="session")
def kalm_npy(tmp_path_factory) -> Path:
    """KALM's released clevr_robot.npy (pickled), written from the shipped pickle-free copy."""
    return kalm_reference.write_npy("clevr_robot", tmp_path_factory.mktemp("kalm-clevr"))


@pytest.fixture(scope="session")
def kalm_prompt_npy(tmp_path_factory) -> Path:
    """KALM's released clevr_rephrase_prompt.npy (pickled), written from the shipped pickle-free copy."""
    return kalm_reference.write_npy("clevr_rephrase_prompt", tmp_path_factory.mktemp("kalm-clevr-prompts"))


@pytest.fixture(scope="session")
def kalm_dataset(kalm_npy):
    from kalm_bench_plugins.clevr.data import import_kalm_dataset

    return import_kalm_dataset(kalm_npy, trust_pickle=True)
