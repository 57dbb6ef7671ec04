"""The causal-LM code paths take their device from the config: no tensor is made on a hard-coded device.

GPU runs cannot happen in CI, so this reads the code that a ``device: cuda`` run executes: every tensor
constructor passes ``device=`` (or builds a CPU batch that its caller moves with ``.to(device)``), and the
literal ``"cpu"`` appears only where a device is resolved or a checkpoint is mapped on load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import kalm_bench_plugins.kalm as kalm

FILES = ["hf.py", "backbone.py", "policy.py", "losses.py", "engine.py"]
CONSTRUCTORS = {"zeros", "ones", "full", "arange", "empty", "as_tensor", "tensor", "rand", "randn", "eye"}
# Functions that build CPU tensors on purpose: their callers move the result to the device.
CPU_BUILDERS = {"collate"}
# Where "cpu" is a value being resolved or compared, not a place tensors are put.
CPU_LITERAL_OK = {"resolve_device", "_make_accelerator", "load_engine", "embedded_backbone"}


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("name", FILES)
def test_tensors_are_made_on_the_configured_device(name):
    tree = ast.parse((Path(kalm.__file__).parent / name).read_text())
    bad = []
    for fn in _functions(tree):
        if fn.name in CPU_BUILDERS:
            continue
        for node in ast.walk(fn):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and node.func.attr in CONSTRUCTORS
                    and not any(k.arg == "device" for k in node.keywords)):
                # A tensor built from another tensor's values keeps to CPU only if nothing moves it.
                parent_moves = any(isinstance(p, ast.Attribute) and p.attr == "to" for p in _parents(fn, node))
                if not parent_moves:
                    bad.append(f"{name}:{node.lineno} torch.{node.func.attr} in {fn.name}()")
    assert not bad, bad


@pytest.mark.parametrize("name", FILES)
def test_cpu_is_never_hard_coded(name):
    tree = ast.parse((Path(kalm.__file__).parent / name).read_text())
    bad = []
    for fn in _functions(tree):
        if fn.name in CPU_LITERAL_OK:
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cpu"):
                bad.append(f"{name}:{node.lineno} in {fn.name}()")
    assert not bad, bad


def _parents(root: ast.AST, target: ast.AST):
    """The attribute nodes on the path from ``root`` down to ``target`` (e.g. ``torch.x(...).to(dev)``)."""
    path: list[ast.AST] = []

    def walk(node: ast.AST) -> bool:
        if node is target:
            return True
        for child in ast.iter_child_nodes(node):
            path.append(node)
            if walk(child):
                return True
            path.pop()
        return False

    walk(root)
    return [p for p in path if isinstance(p, ast.Attribute)]
