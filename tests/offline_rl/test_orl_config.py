"""Registration, presets and d3rlpy config mapping of the offline-RL algorithms."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from kalm_bench.plugins import build_registry

NAMES = ["discrete-bc", "discrete-cql", "bc", "cql", "td3+bc", "awac", "iql"]


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def test_all_algorithms_registered_by_the_entry_point(registry):
    assert set(NAMES) <= set(registry.names("algorithms"))
    for name in NAMES:
        assert registry.plugin_of("algorithms", name).name == "offline_rl"
    assert not [p for p in registry.failures() if p.name == "offline_rl"]


def test_registration_imports_no_heavy_library():
    code = ("import sys; from kalm_bench.plugins import build_registry; r = build_registry(); "
            "assert 'cql' in r.names('algorithms'); "
            "heavy = [m for m in ('torch', 'd3rlpy', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    # only this plugin: another plugin's imports must not make this test fail
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   env={**os.environ, "KALM_BENCH_LOAD_PLUGINS": "offline_rl"})


@pytest.mark.parametrize("name", NAMES)
def test_presets_and_d3rlpy_fields_match_the_installed_d3rlpy(registry, name):
    import d3rlpy

    cls = registry.get("algorithms", name)
    assert cls.default_preset == "paper" and {"paper", "official"} <= set(cls.presets)
    cfg_cls = cls.Config
    d3cls = getattr(d3rlpy.algos, cfg_cls.d3rlpy_config)
    assert set(cfg_cls.passed_fields()) == {f.name for f in dataclasses.fields(d3cls)}
    for preset in cls.presets:
        cfg = cls.make_config(preset)
        assert cls(cfg).to_dict()["params"] == cfg.model_dump(mode="json")
        from kalm_bench_plugins.d3rlpy_layer import build_d3rlpy_config

        d3 = build_d3rlpy_config(cfg)
        for field, value in cls.presets[preset].items():
            if field == "observation_scaler":  # a name here, an (unfitted) d3rlpy scaler there
                assert getattr(d3, field).get_type() == value, preset
            else:
                assert getattr(d3, field) == value, (preset, field)
        for f in cfg_cls.passed_fields():
            if f.endswith("encoder_factory"):
                assert list(getattr(d3, f).hidden_units) == [256, 256]


def test_paper_and_official_presets_differ_where_the_code_differs(registry):
    from kalm_bench_plugins.d3rlpy_layer import build_d3rlpy_config

    td3 = registry.get("algorithms", "td3+bc")
    assert build_d3rlpy_config(td3.make_config("paper")).alpha == 0.5
    assert build_d3rlpy_config(td3.make_config("official")).alpha == 2.5
    cql = registry.get("algorithms", "cql")
    paper, official = (build_d3rlpy_config(cql.make_config(p)) for p in ("paper", "official"))
    assert (paper.batch_size, paper.critic_learning_rate) == (32, 6.25e-5)
    assert (official.batch_size, official.actor_learning_rate, official.critic_learning_rate) == (256, 1e-4, 3e-4)
    assert paper.conservative_weight == official.conservative_weight == 10.0
    dcql = build_d3rlpy_config(registry.get("algorithms", "discrete-cql").make_config("official"))
    assert (dcql.alpha, dcql.batch_size, dcql.learning_rate, dcql.target_update_interval) == (10.0, 32, 6.25e-5, 8000)
    for name in NAMES:  # the γ_eff = 1 defect is never on by default
        for preset in ("paper", "official"):
            assert registry.get("algorithms", name).make_config(preset).official_gamma_bug is False


def test_any_d3rlpy_field_can_be_overridden(registry):
    from kalm_bench_plugins.d3rlpy_layer import build_d3rlpy_config

    cls = registry.get("algorithms", "discrete-cql")
    cfg = cls.make_config(overrides={
        "hidden_units": [64],
        "d3rlpy": {"q_func_factory": {"type": "qr", "params": {"n_quantiles": 16}},
                   "optim_factory": {"type": "adam", "params": {"weight_decay": 1e-4}}}})
    d3 = build_d3rlpy_config(cfg)
    assert d3.q_func_factory.get_type() == "qr" and d3.q_func_factory.n_quantiles == 16
    assert d3.optim_factory.weight_decay == 1e-4
    assert list(d3.encoder_factory.hidden_units) == [64]


def test_unknown_d3rlpy_field_is_an_error_naming_it(registry):
    cls = registry.get("algorithms", "td3+bc")
    with pytest.raises(ValidationError, match=r"d3rlpy\.n_critic: unknown field of d3rlpy TD3PlusBCConfig"):
        cls.make_config(overrides={"d3rlpy": {"n_critic": 3}})
    with pytest.raises(ValidationError, match=r"d3rlpy\.alpha: 'alpha' is an option of this algorithm"):
        cls.make_config(overrides={"d3rlpy": {"alpha": 3}})
    with pytest.raises(ValidationError, match=r"d3rlpy\.q_func_factory: invalid value"):
        cls.make_config(overrides={"d3rlpy": {"q_func_factory": {"type": "nonsense", "params": {}}}})
    with pytest.raises(ValidationError):
        cls.make_config(overrides={"alhpa": 3})  # a typo in a first-class option
    with pytest.raises(KeyError):
        cls.make_config("paperr")
