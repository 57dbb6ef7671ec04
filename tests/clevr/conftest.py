from pathlib import Path

import pytest

REF = Path(__file__).resolve().parents[3] / "shared" / "reference" / "kalm"


@pytest.fixture(scope="session")
def kalm_npy() -> Path:
    path = REF / "clevr_robot.npy"
    if not path.is_file():
        pytest.skip(f"KALM reference data not found at {path}")
    return path


@pytest.fixture(scope="session")
def kalm_prompt_npy() -> Path:
    path = REF / "clevr_rephrase_prompt.npy"
    if not path.is_file():
        pytest.skip(f"KALM reference data not found at {path}")
    return path


@pytest.fixture(scope="session")
def kalm_dataset(kalm_npy):
    from kalm_bench_plugins.clevr.data import import_kalm_dataset

    return import_kalm_dataset(kalm_npy, trust_pickle=True)
