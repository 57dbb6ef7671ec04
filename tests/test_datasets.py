"""The trajectory dataset format: round trip, and clear errors for corrupt or truncated files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kalm_bench.datasets import Episode, TrajectoryDataset
from kalm_bench.errors import UserError


def _ds(n=5):
    rng = np.random.default_rng(0)
    eps = []
    for i in range(n):
        t = 3 + i % 3
        eps.append(Episode(rng.normal(size=(t + 1, 4)).astype(np.float32), rng.integers(0, 6, t),
                           rng.normal(size=t), f"goal {i}", {"k": i}, "seen", i % 2 == 0))
    return TrajectoryDataset.from_episodes(eps, env="x", action_kind="discrete", action_size=6, seed=3, source="t")


def test_round_trip(tmp_path):
    ds = _ds()
    ds.save(tmp_path / "d")
    back = TrajectoryDataset.load(tmp_path / "d")
    for k in ("states", "actions", "rewards", "next_states", "lengths", "success", "instructions", "goals"):
        np.testing.assert_array_equal(getattr(back, k), getattr(ds, k))
    assert back.episode(2).goal == {"k": 2} and back.episode(2).states.shape == (6, 4)
    np.testing.assert_array_equal(back.episode(1).states[1:], ds.next_states[3:7])
    terminals, timeouts = back.end_flags()
    assert terminals.sum() == 3 and timeouts.sum() == 2 and not np.any(terminals * timeouts)
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert m["n_episodes"] == 5 and m["seed"] == 3 and len(m["files"]["data.npz"]) == 64


def test_truncated_file_is_a_clear_error(tmp_path):
    _ds().save(tmp_path / "d")
    data = tmp_path / "d" / "data.npz"
    data.write_bytes(data.read_bytes()[:200])
    with pytest.raises(UserError) as exc:
        TrajectoryDataset.load(tmp_path / "d")
    assert "data.npz" in str(exc.value) and "checksum mismatch" in str(exc.value)
    with pytest.raises(UserError, match="cannot read arrays"):
        TrajectoryDataset.load(tmp_path / "d", verify=False)


def test_manifest_problems(tmp_path):
    with pytest.raises(UserError, match="manifest.json"):
        TrajectoryDataset.load(tmp_path)
    _ds().save(tmp_path / "d")
    mpath = tmp_path / "d" / "manifest.json"
    m = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(UserError) as exc:
        TrajectoryDataset.load(tmp_path / "d")
    assert exc.value.field == "format_version"
    mpath.write_text(json.dumps({**m, "n_episodes": 4}))
    with pytest.raises(UserError, match="n_episodes"):
        TrajectoryDataset.load(tmp_path / "d")
    mpath.write_text("{not json")
    with pytest.raises(UserError, match="corrupt manifest"):
        TrajectoryDataset.load(tmp_path / "d")


def test_saving_over_an_existing_dataset_is_atomic(tmp_path, monkeypatch):
    _ds(5).save(tmp_path / "d")
    import kalm_bench.datasets as mod

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(mod.os, "replace", crash)
    with pytest.raises(OSError):
        _ds(2).save(tmp_path / "d")
    monkeypatch.undo()
    assert TrajectoryDataset.load(tmp_path / "d").n_episodes == 5
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_inconsistent_arrays_rejected():
    ds = _ds()
    with pytest.raises(ValueError, match="lengths sum"):
        TrajectoryDataset(**{**ds.__dict__, "lengths": ds.lengths + 1})
