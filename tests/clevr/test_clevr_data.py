"""Dataset generation, KALM import, replay, CLI and Minari export."""

import json

import click
import numpy as np
import pytest
from click.testing import CliRunner

from kalm_bench.datasets import TrajectoryDataset, sha256_file
from kalm_bench.errors import UserError
from kalm_bench_plugins.clevr import data as D
from kalm_bench_plugins.clevr import goals as G
from kalm_bench_plugins.clevr.plugin import ClevrRobot


@pytest.fixture(scope="module")
def small_ds():
    return ClevrRobot().generate_dataset(24, seed=3)


def test_generated_dataset_shape_and_content(small_ds):
    ds = small_ds
    assert ds.env == "clevr-robot" and ds.action_kind == "discrete" and ds.action_size == 40
    assert ds.n_episodes == 24 and ds.state_dim == 10 and set(ds.levels) == {"seen"}
    assert ds.attrs["level"] == "seen" and len(ds.attrs["instructions_by_goal"]) == 80
    for ep in ds.episodes():
        goal = G.validate_goal(ep.goal)
        assert ep.instruction in ds.attrs["instructions_by_goal"][G.goal_key(goal)]
        assert not G.pair_success(ep.states[0], goal)
        if ep.success:
            assert G.pair_success(ep.states[-1], goal) and ep.rewards[-1] == 100.0
            assert not any(G.pair_success(s, goal) for s in ep.states[1:-1])
    # goals are balanced: 24 episodes of a permutation of the 80 goals are distinct
    assert len(set(ds.goals.tolist())) == 24


def test_generation_is_deterministic(small_ds, tmp_path):
    again = ClevrRobot().generate_dataset(24, seed=3)
    for k in ("states", "actions", "rewards", "next_states", "lengths", "success", "instructions", "goals"):
        assert np.array_equal(getattr(small_ds, k), getattr(again, k)), k
    a = json.loads(small_ds.save(tmp_path / "a").joinpath("manifest.json").read_text())
    b = json.loads(again.save(tmp_path / "b").joinpath("manifest.json").read_text())
    assert a == b  # includes the sha256 of data.npz
    other = ClevrRobot().generate_dataset(3, seed=4)
    assert not np.array_equal(other.states[:3], small_ds.states[:3])


def test_generation_prefix_does_not_depend_on_n(small_ds):
    # Episode i draws from its own stream, so a smaller run is a prefix (the goal order is shared).
    part = ClevrRobot().generate_dataset(5, seed=3)
    n = int(part.lengths.sum())
    assert np.array_equal(part.states, small_ds.states[:n])


@pytest.mark.slow
def test_expert_reaches_seen_goals():
    ds = ClevrRobot().generate_dataset(160, seed=11)
    rate = float(ds.success.mean())
    assert rate >= 0.95, rate
    assert len(set(ds.goals.tolist())) == 80


def test_expert_with_noise_still_succeeds():
    ds = ClevrRobot({"expert_epsilon": 0.2}).generate_dataset(20, seed=5)
    # measured 20/20; 0.8 leaves four episodes of margin and still fails a broken expert
    assert ds.attrs["epsilon"] == 0.2 and ds.success.mean() >= 0.8


def test_generated_dataset_replays_exactly(small_ds, tmp_path):
    ds = TrajectoryDataset.load(small_ds.save(tmp_path / "gen"))
    report = D.replay_dataset(ds)
    # float32 storage: rounding of the stored states only; the replay itself is exact.
    assert report.ok and report.max_error < 1e-3 and report.n_reached == int(ds.success.sum())


def test_unknown_generation_option():
    with pytest.raises(UserError, match="unknown dataset option"):
        ClevrRobot().generate_dataset(1, 0, nope=1)


def test_import_needs_trust_flag_and_checks_input(kalm_npy, tmp_path):
    with pytest.raises(UserError, match="trust_pickle"):
        D.import_kalm_dataset(kalm_npy)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError) as exc:
        D.import_kalm_dataset(bad, trust_pickle=True)
    assert "bad.npy" in str(exc.value)
    missing = tmp_path / "missing.npy"
    np.save(missing, np.array({"observations": np.zeros((1, 50, 10))}, dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="next_observations"):
        D.import_kalm_dataset(missing, trust_pickle=True)


def test_import_kalm_dataset(kalm_dataset, kalm_npy, monkeypatch):
    ds = kalm_dataset
    assert ds.n_episodes == 80 and ds.n_transitions == 898 and ds.success.all()
    # The fixture re-pickles the shipped copy of the release, so the file's bytes (and sha256) differ from
    # the released file's even though the arrays are the same: not recognised as the release, unless its
    # digest is the one the importer knows.
    assert ds.attrs["source_sha256"] == sha256_file(kalm_npy) != D.KALM_DATASET_SHA256
    assert ds.attrs["known_release"] is False
    monkeypatch.setattr(D, "KALM_DATASET_SHA256", sha256_file(kalm_npy))
    assert D.import_kalm_dataset(kalm_npy, trust_pickle=True).attrs["known_release"] is True
    assert len({g for g in ds.goals.tolist()}) == 80
    first = ds.episode(0)
    assert first.goal == {"type": "pair", "src": 3, "dst": 4, "dir": "behind"}
    assert first.instruction == "Push the purple ball behind the cyan ball"
    assert len(ds.attrs["instructions_by_goal"]["pair:purple>cyan:behind"]) == 54


def _cli():
    from kalm_bench_plugins.clevr import register_commands

    @click.group()
    def root():
        pass

    register_commands(root)
    return root


def test_cli_import_and_replay(kalm_npy, tmp_path):
    runner = CliRunner()
    out = tmp_path / "kalm"
    res = runner.invoke(_cli(), ["clevr", "import", str(kalm_npy), "--out", str(out)])
    assert res.exit_code != 0 and "trust" in res.output
    res = runner.invoke(_cli(), ["clevr", "import", str(kalm_npy), "--out", str(out), "--trust-pickle"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_cli(), ["clevr", "replay", str(out), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["replay_reaches_goal"] == 80 and stats["median_error"] <= 1e-4
    # Raw modern MuJoCo (no compatibility patches) does not reproduce the data: non-zero exit.
    res = runner.invoke(_cli(), ["clevr", "replay", str(out), "--set", "compat_patches=false"])
    assert res.exit_code == 1 and "MISMATCH" in res.output


def test_cli_replay_reports_corrupt_dataset(tmp_path, small_ds):
    path = small_ds.save(tmp_path / "ds")
    with open(path / "data.npz", "r+b") as f:
        f.truncate(100)
    res = CliRunner().invoke(_cli(), ["clevr", "replay", str(path)])
    assert res.exit_code == 2 and "data.npz" in res.output


def test_cli_cases():
    res = CliRunner().invoke(_cli(), ["clevr", "cases", "easy", "-n", "3", "--seed", "1"])
    assert res.exit_code == 0, res.output
    cases = [json.loads(line) for line in res.output.splitlines()]
    assert len(cases) == 3 and all(c["goal"]["type"] == "move" for c in cases)


def test_export_minari(small_ds, tmp_path):
    minari = pytest.importorskip("minari")
    mds = D.export_minari(small_ds, "kalm_bench/clevr-robot/test-v0", root=tmp_path)
    assert mds.total_episodes == small_ds.n_episodes
    space = mds.observation_space  # the env's real, bounded space, not an unbounded Box
    assert np.isfinite(space.low).all() and np.isfinite(space.high).all() and space.shape == (10,)
    assert mds.total_steps == small_ds.n_transitions
    ep = next(mds.iterate_episodes([0]))
    first = small_ds.episode(0)
    assert np.allclose(ep.observations, first.states) and np.array_equal(ep.actions, first.actions)
    side = json.loads((tmp_path / "kalm_bench" / "clevr-robot" / "test-v0" / "kalm_bench_episodes.json").read_text())
    assert side[0]["instruction"] == first.instruction
    del minari


def test_replay_accepts_kalm_goal_arrays(kalm_dataset):
    # Datasets written by other importers may keep KALM's raw goal arrays instead of goal dicts.
    eps = list(kalm_dataset.episodes())[:5]
    for ep in eps:
        ep.goal = [float(v) for v in G.goal_to_array(ep.goal)]
    ds = TrajectoryDataset.from_episodes(eps, env="clevr-robot", action_kind="discrete", action_size=40)
    report = D.replay_dataset(ds)
    assert report.n_reached == 5 and report.ok
    env = ClevrRobot()
    lab = env.label_rollout("seen", {"goal": ds.episode(0).goal, "instruction": ""}, ds.episode(0).states,
                            ds.episode(0).actions)
    assert lab.success and lab.end == len(ds.episode(0).actions)


@pytest.mark.slow
def test_parallel_generation_gives_the_same_data(small_ds):
    serial = D.generate_dataset(60, seed=3)  # two chunks of the work split
    parallel = D.generate_dataset(60, seed=3, jobs=2)
    for k in ("states", "actions", "rewards", "instructions", "goals", "success"):
        assert np.array_equal(getattr(serial, k), getattr(parallel, k)), k
    n = int(small_ds.lengths.sum())
    assert np.array_equal(serial.states[:n], small_ds.states)
