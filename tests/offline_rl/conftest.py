"""Fixtures for the offline-RL plugin tests (helpers live in orl_helpers.py)."""

from __future__ import annotations

import pytest

import kalm_reference


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
    """KALM's released 80 CLEVR trajectories: the dict of clevr_robot.npy, from the shipped pickle-free copy."""
    return kalm_reference.load("clevr_robot")
