"""`kalm-bench metaworld ...` commands."""

import click
import pytest
from click.testing import CliRunner

from kalm_bench.datasets import TrajectoryDataset



@pytest.fixture()
def cli():
    from kalm_bench_plugins.metaworld.cli import add_commands

    @click.group()
    def root():
        pass

    add_commands(root)
    return root


def test_import_command(cli, tmp_path, kalm_meta_world_npy):
    runner = CliRunner()
    out = tmp_path / "kalm"
    res = runner.invoke(cli, ["metaworld", "import", str(kalm_meta_world_npy), "--out", str(out)])
    assert res.exit_code != 0 and "trust" in str(res.exception)
    res = runner.invoke(cli, ["metaworld", "import", str(kalm_meta_world_npy), "--trust-pickle", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert TrajectoryDataset.load(out).n_episodes == 10


def test_check_command(cli):
    res = CliRunner().invoke(cli, ["metaworld", "check", "-n", "1", "--task", "coffee-button"])
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("coffee-button")][0]
    assert "1/1" in line
    res = CliRunner().invoke(cli, ["metaworld", "check", "-n", "1", "--task", "juggle"])
    assert res.exit_code != 0 and "juggle" in str(res.exception)
