"""Shared fixtures. Core tests run against the test-only plugins in kb_testplugins.py, with entry-point
plugins switched off, so they check the harness and nothing else. Helpers live in kb_helpers.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kb_helpers import SUITE, TESTS  # noqa: E402


@pytest.fixture
def core_env(monkeypatch, tmp_path):
    """Only the built-in and test plugins; a private cache. Also exported for subprocesses."""
    from kalm_bench.plugins import set_registry

    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "")
    monkeypatch.setenv("KALM_BENCH_PLUGIN_MODULES", "kb_testplugins")
    monkeypatch.setenv("KALM_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("KALM_BENCH_STRICT_PLUGINS", raising=False)
    # Stages run in the test process (a worker process would import torch again for every run); the tests
    # of the worker processes themselves (crashes, --jobs) unset it or use --jobs 2.
    monkeypatch.setenv("KALM_BENCH_IN_PROCESS", "1")
    set_registry(None)
    yield tmp_path
    set_registry(None)


@pytest.fixture
def suite_file(core_env):
    path = core_env / "suite.yaml"
    path.write_text(SUITE)
    return path


def _release_npy(name: str, tmp_path_factory) -> Path:
    import kalm_reference

    return kalm_reference.write_npy(name, tmp_path_factory.mktemp(name))


@pytest.fixture(scope="session")
def kalm_npy(tmp_path_factory) -> Path:
    """KALM's released clevr_robot.npy (a pickle), written from the shipped pickle-free copy in tests/data."""
    return _release_npy("clevr_robot", tmp_path_factory)


@pytest.fixture(scope="session")
def kalm_prompt_npy(tmp_path_factory) -> Path:
    """KALM's released clevr_rephrase_prompt.npy, written from the shipped copy."""
    return _release_npy("clevr_rephrase_prompt", tmp_path_factory)


@pytest.fixture(scope="session")
def kalm_meta_world_npy(tmp_path_factory) -> Path:
    """KALM's released meta_world.npy, written from the shipped copy."""
    return _release_npy("meta_world", tmp_path_factory)
