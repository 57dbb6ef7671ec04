import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def mw_env():
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    return MetaworldEnvironment()

@pytest.fixture(scope="session")
def small_dataset(mw_env):
    # two episodes per seen task; shared by the dataset, oracle and d3rlpy tests
    return mw_env.generate_dataset(20, seed=3)
