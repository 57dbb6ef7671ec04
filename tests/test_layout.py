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


def test_the_tested_constraints_satisfy_the_declared_ranges():
    """`pip install -c constraints.txt` must be solvable: every exact pin lies inside pyproject's range."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = ROOT
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    bad = []
    for text in reqs:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        if name == "kalm-bench":
            continue
        if name not in pins:
            bad.append(f"{text}: not pinned in constraints.txt")
        elif not req.specifier.contains(pins[name], prereleases=True):
            bad.append(f"{text}: constraints.txt pins {pins[name]}")
    assert bad == []
