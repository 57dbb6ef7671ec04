"""Suite loading: schema errors name the file and the field, includes and overrides merge in order."""

from __future__ import annotations

import pytest

from kb_helpers import SUITE, run_cli
from kalm_bench.errors import UserError
from kalm_bench.plan import build_plan
from kalm_bench.plugins import get_registry
from kalm_bench.suite import load_suite, parse_override

BASE = SUITE


def _check(tmp_path, text: str, overrides=()):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    loaded = load_suite(path, overrides)
    return build_plan(loaded, get_registry())


MALFORMED = [
    # (suite text, expected field, expected words in message)
    ("suite: x\nenv: {name: line-world}\n", "algorithms", "missing"),
    (BASE.replace("version: 1", "version: one"), "version", "integer"),
    (BASE.replace("suite: line", "suite: 'has space'"), "suite", "pattern"),
    (BASE + "typo_field: 3\n", "typo_field", "unknown field"),
    (BASE.replace("name: line-world", "name: no-such-env"), "env.name", "valid: line-world"),
    (BASE.replace("name: tabular-bc", "name: no-such-algo"), "algorithms[0].name", "valid: tabular-bc"),
    (BASE.replace("backend: scripted-llm", "backend: gpt-9"), "llm.backend", "valid: scripted-llm"),
    (BASE.replace("{name: tabular-bc, variants", "{name: tabular-bc, config: {batchsize: 3}, variants"),
     "algorithms[0].config.batchsize", "unknown option"),
    (BASE.replace("{name: tabular-bc, variants", "{name: tabular-bc, preset: huge, variants"),
     "algorithms[0].preset", "valid: tiny"),
    (BASE.replace("variants: [base, kalm]", "variants: [base, magic]"), "algorithms[0].variants[1]", "base"),
    (BASE.replace("seeds: [0, 1]", "seeds: zero"), "seeds", ""),
    (BASE.replace("steps: 12", "steps: -5"), "train.steps", "greater than or equal to 1"),
    (BASE.replace("counts: {rephrase: 40, far: 40}", "counts: {rephrase: 40}"), "rollouts.counts", "far"),
    (BASE.replace("for_level: {seen: rephrase}", "for_level: {seen: nowhere}"), "rollouts.for_level.seen",
     "unknown level"),
    (BASE.replace("env: {name: line-world}", "env: {name: line-world, levels: [seen, moon]}"), "env.levels[1]",
     "valid: seen, rephrase, far"),
    (BASE.replace("grounding_tasks: [scripted]", "grounding_tasks: [scripted, telepathy]"),
     "llm.grounding_tasks[1]", "valid: scripted"),
    (BASE.replace("llm: {backend: scripted-llm, grounding_tasks: [scripted]}\n", ""), "llm", "required"),
    ("suite: x\n  bad: indentation: here\n", None, "invalid YAML at line"),
    ("- just\n- a list\n", None, "must be a mapping"),
]


@pytest.mark.parametrize("text,field,words", MALFORMED)
def test_malformed_suite_names_file_and_field(core_env, text, field, words):
    with pytest.raises(UserError) as exc:
        _check(core_env, text)
    err = exc.value
    assert err.file is not None and err.file.name == "bad.yaml", str(err)
    if field is not None:
        assert err.field == field, str(err)
    assert words in str(err)


def test_cli_error_is_one_line_without_traceback(core_env):
    bad = core_env / "bad.yaml"
    bad.write_text(BASE.replace("name: tabular-bc", "name: no-such-algo"))
    proc = run_cli("validate", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml: algorithms[0].name: unknown algorithm 'no-such-algo'" in lines[0]


def test_include_and_override_precedence(core_env):
    base = core_env / "base.yaml"
    base.write_text(BASE)
    child = core_env / "child.yaml"
    child.write_text("include: base.yaml\nsuite: child\ntrain: {steps: 30}\n")
    loaded = load_suite(child)
    s = loaded.suite
    assert s.suite == "child"
    assert s.train.steps == 30 and s.train.checkpoint_every == 4  # mapping merged key by key
    assert s.data.episodes == 120  # from the base
    over = load_suite(child, ["train.steps=50", "seeds=[3]", "seeds+=4", "algorithms[0].config.batch_size=8",
                              "data.options.noise=0.5"])
    assert over.suite.train.steps == 50
    assert over.suite.seed_list == [3, 4]
    assert over.suite.algorithms[0].config == {"batch_size": 8}
    assert over.suite.data.options == {"noise": 0.5}
    assert s.eval.seed == 7  # schema default when nobody sets it


def test_error_in_included_file_names_that_file(core_env):
    base = core_env / "base.yaml"
    base.write_text(BASE.replace("steps: 12", "steps: -1"))
    child = core_env / "child.yaml"
    child.write_text("include: base.yaml\nsuite: child\n")
    with pytest.raises(UserError) as exc:
        load_suite(child)
    assert exc.value.file.name == "base.yaml" and exc.value.field == "train.steps"


def test_error_from_override_names_the_override(core_env):
    path = core_env / "s.yaml"
    path.write_text(BASE)
    with pytest.raises(UserError) as exc:
        load_suite(path, ["train.steps=lots"])
    assert str(exc.value.file) == "-x override" and exc.value.field == "train.steps"


def test_include_cycle_and_missing_include(core_env):
    a, b = core_env / "a.yaml", core_env / "b.yaml"
    a.write_text("include: b.yaml\n")
    b.write_text("include: a.yaml\n")
    with pytest.raises(UserError, match="include cycle"):
        load_suite(a)
    c = core_env / "c.yaml"
    c.write_text("include: nothere.yaml\n")
    with pytest.raises(UserError, match="not found"):
        load_suite(c)


def test_parse_override_forms():
    assert parse_override("a.b=1") == (["a", "b"], "=", 1)
    assert parse_override("a[2].c=x") == (["a", 2, "c"], "=", "x")
    assert parse_override("seeds+=[1, 2]") == (["seeds"], "+=", [1, 2])
    with pytest.raises(UserError):
        parse_override("no-equals-sign")


def test_show_config_prints_merged_suite(core_env, suite_file):
    proc = run_cli("run", str(suite_file), "--show-config", "-x", "train.steps=99", check=True)
    assert "steps: 99" in proc.stdout and "checkpoint_every: 4" in proc.stdout
