"""Fixtures for the Decision Transformer tests (helpers live in dt_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The machines are shared; one thread keeps timings and results stable.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def registry():
    from kalm_bench.plugins import build_registry

    return build_registry()
