import pytest


@pytest.fixture(scope="session")
def kalm_dataset(kalm_npy):
    from kalm_bench_plugins.clevr.data import import_kalm_dataset

    return import_kalm_dataset(kalm_npy, trust_pickle=True)
