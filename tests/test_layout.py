"""Repository layout guards: every package is shipped, and test module names never collide."""

from __future__ import annotations

import re
from collections import Counter

from kb_helpers import ROOT


def test_every_package_is_listed_in_pyproject():
    text = (ROOT / "pyproject.toml").read_text()
    listed = set(re.findall(r'"(kalm_bench(?:_plugins)?(?:\.[a-z_]+)*)"', text))
    for base, name in (("harness", "kalm_bench"), ("plugins", "kalm_bench_plugins")):
        for init in (ROOT / base).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / base)
            package = ".".join([name, *rel.parts])
            assert package in listed, f"{package} is missing from pyproject's packages"


def test_test_module_basenames_are_unique():
    # pytest's default import mode needs unique basenames across test folders without __init__.py.
    names = Counter(p.name for p in (ROOT / "tests").rglob("*.py") if p.name != "conftest.py")
    assert [n for n, c in names.items() if c > 1] == []


def test_github_workflow_runs_the_ci_script():
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    assert any(s.get("run", "").strip() == ".ci/run" for s in steps)
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)


def test_product_names_no_development_machine():
    # Built by concatenation so that this file does not match itself.
    pattern = re.compile("/" + "work/|\\.\\./" + "shared|[Ii]ssue " + "[0-9]")
    roots = [ROOT / d for d in ("harness", "plugins", "suites", "results", "examples", "tests", ".ci", ".github")]
    files = [p for r in roots for p in r.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.suffix not in {".png", ".npz", ".pyc"}] + [ROOT / "README.md", ROOT / "pyproject.toml"]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in files for n, line in
            enumerate(p.read_text(errors="replace").splitlines(), 1) if pattern.search(line)]
    assert hits == []
