"""`kalm-bench metaworld ...` commands."""

import os

import click
import pytest
from click.testing import CliRunner

from kalm_bench.datasets import TrajectoryDataset

KALM_NPY = "/work/shared/reference/kalm/meta_world.npy"


@pytest.fixture()
def cli():
    from kalm_bench_plugins.metaworld.cli import add_commands

    @click.group()
    def root():
        pass

    add_commands(root)
    return root


@pytest.mark.skipif(not os.path.exists(KALM_NPY), reason="KALM reference data not present")
def test_import_command(cli, tmp_path):
    runner = CliRunner()
    out = tmp_path / "kalm"
    res = runner.invoke(cli, ["metaworld", "import", KALM_NPY, "--out", str(out)])
    assert res.exit_code != 0 and "trust" in str(res.exception)
    res = runner.invoke(cli, ["metaworld", "import", KALM_NPY, "--trust-pickle", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert TrajectoryDataset.load(out).n_episodes == 10


def test_check_command(cli):
    res = CliRunner().invoke(cli, ["metaworld", "check", "-n", "1", "--task", "coffee-button"])
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("coffee-button")][0]
    assert "1/1" in line
    res = CliRunner().invoke(cli, ["metaworld", "check", "-n", "1", "--task", "juggle"])
    assert res.exit_code != 0 and "juggle" in str(res.exception)
