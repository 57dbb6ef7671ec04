"""Every hook is typed and documented, in the code and in the README's plugin section."""

import inspect
import re

from kb_helpers import ROOT
from kalm_bench import hookspecs


def _specs():
    return [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(f, "kalm_bench_spec")]


def test_there_are_hooks():
    names = {f.__name__ for f in _specs()}
    assert {"register_envs", "register_algorithms", "register_llm_backends", "register_grounding_tasks",
            "register_executors", "register_reporters", "register_encoders", "register_commands"} <= names


def test_every_hook_has_docstring_params_and_types():
    for f in _specs():
        doc = inspect.getdoc(f) or ""
        assert len(doc) > 40, f"{f.__name__} is undocumented"
        sig = inspect.signature(f)
        for p in sig.parameters.values():
            assert p.annotation is not inspect.Parameter.empty, f"{f.__name__}({p.name}) has no type"
            assert f":param {p.name}:" in doc, f"{f.__name__} does not document {p.name}"
        assert sig.return_annotation is not inspect.Signature.empty


def test_every_hook_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Writing a plugin"):]
    for f in _specs():
        assert re.search(rf"`{f.__name__}\(", section), f"README's plugin section does not document {f.__name__}"


def test_core_imports_nothing_from_plugins():
    for path in (ROOT / "harness").rglob("*.py"):
        text = path.read_text()
        assert "kalm_bench_plugins" not in text, f"{path} refers to first-party plugins"
