"""Fixtures for the offline-RL plugin tests (helpers live in orl_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).resolve().parents[3] / "shared" / "reference" / "kalm"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The machines are shared; one thread keeps timings and results stable.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def kalm_clevr():
    """KALM's released 80 CLEVR trajectories (trusted file shipped in /work/shared/reference)."""
    path = REF / "clevr_robot.npy"
    if not path.is_file():
        pytest.skip(f"KALM reference data not found at {path}")
    return np.load(path, allow_pickle=True).item()  # origin known: the KALM release
