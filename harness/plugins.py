"""Plugin discovery and the registry of everything plugins provide.

Plugins come from the built-in modules below and from the ``kalm_bench`` entry-point group. Each plugin
is loaded and asked to register on its own, so one that raises is reported (``kalm-bench plugins``) and
skipped while the others keep working. ``KALM_BENCH_STRICT_PLUGINS=1`` turns any failure into an error
(for CI); ``KALM_BENCH_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none), and
``KALM_BENCH_PLUGIN_MODULES=pkg.mod,...`` loads importable modules as plugins without packaging them.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import api, hookspecs
from .errors import PluginError, UserError

GROUP = "kalm_bench"
BUILTIN_PLUGINS = ("kalm_bench.builtin.executors", "kalm_bench.builtin.reporters", "kalm_bench.builtin.sources")

# registry kind -> (hook name, required base class)
KINDS: dict[str, tuple[str, type]] = {
    "envs": ("register_envs", api.Environment),
    "algorithms": ("register_algorithms", api.Algorithm),
    "llm_backends": ("register_llm_backends", api.LLMBackend),
    "grounding_tasks": ("register_grounding_tasks", api.GroundingTask),
    "rollout_sources": ("register_rollout_sources", api.RolloutSource),
    "encoders": ("register_encoders", api.TextEncoder),
    "executors": ("register_executors", api.Executor),
    "reporters": ("register_reporters", api.Reporter),
}
SINGULAR = {"envs": "environment", "algorithms": "algorithm", "llm_backends": "LLM backend",
            "grounding_tasks": "grounding task", "rollout_sources": "rollout source", "encoders": "text encoder", "executors": "executor",
            "reporters": "reporter"}


@dataclass
class PluginInfo:
    name: str
    module: str
    dist: str | None = None
    version: str | None = None
    builtin: bool = False
    registered: dict[str, list[str]] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "distribution": self.dist, "version": self.version,
                "builtin": self.builtin, "hooks": self.hooks, "registered": self.registered,
                "error": self.error}


@dataclass
class Entry:
    cls: type
    plugin: str


class Registry:
    """Name → class for every kind, with the plugin each came from."""

    def __init__(self, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo]):
        self.pm = pm
        self.plugins = plugins
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str, *, file: Any = None, field: str | None = None) -> type:
        try:
            return self.entries[kind][name].cls
        except KeyError:
            valid = ", ".join(self.names(kind)) or "none registered"
            raise UserError(f"unknown {SINGULAR[kind]} {name!r}; valid: {valid}", file=file,
                            field=field) from None

    def plugin_of(self, kind: str, name: str) -> PluginInfo:
        return self.plugins[self.entries[kind][name].plugin]

    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]


def _strict() -> bool:
    return os.environ.get("KALM_BENCH_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def _short_error(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _check_class(kind: str, obj: Any) -> str | None:
    base = KINDS[kind][1]
    if not (isinstance(obj, type) and issubclass(obj, base)):
        return f"register() got {obj!r}, expected a subclass of kalm_bench.api.{base.__name__}"
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        return f"{obj.__qualname__} has no string 'name'"
    if getattr(obj, "__abstractmethods__", None):
        return f"{obj.__qualname__} leaves abstract methods unimplemented: {sorted(obj.__abstractmethods__)}"
    return None


def build_registry(load_entrypoints: bool = True, extra: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Create a plugin manager, load plugins one by one, and collect their registrations.

    ``extra`` is (name, plugin object) pairs registered after the others; tests use it.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    def add(name: str, module: str, loader: Any, *, dist: str | None = None, version: str | None = None,
            builtin: bool = False) -> None:
        info = PluginInfo(name=name, module=module, dist=dist, version=version, builtin=builtin)
        infos[name] = info
        try:
            plugin = loader()
            pm.register(plugin, name=name)
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        except Exception as exc:  # a broken plugin must not break the others
            info.error = _short_error(exc)
            if _strict():
                raise PluginError(f"plugin {name!r} failed to load: {info.error}") from exc

    for module in BUILTIN_PLUGINS:
        add(module, module, lambda m=module: importlib.import_module(m), dist="kalm-bench",
            version=_dist_version("kalm-bench"), builtin=True)

    if load_entrypoints:
        allow = os.environ.get("KALM_BENCH_LOAD_PLUGINS")
        allowed = None if allow is None else {s.strip() for s in allow.split(",") if s.strip()}
        seen: set[str] = set()
        for ep in sorted(md.entry_points(group=GROUP), key=lambda e: e.name):
            if ep.name in seen or (allowed is not None and ep.name not in allowed):
                continue
            seen.add(ep.name)
            dist = getattr(ep, "dist", None)
            add(ep.name, ep.value, ep.load, dist=dist.metadata["Name"] if dist else None,
                version=dist.version if dist else None)

    for module in filter(None, (m.strip() for m in os.environ.get("KALM_BENCH_PLUGIN_MODULES", "").split(","))):
        add(module, module, lambda m=module: importlib.import_module(m))

    for name, obj in extra:
        add(name, getattr(obj, "__name__", repr(obj)), lambda o=obj: o)

    registry = Registry(pm, infos)
    for kind, (hook_name, _) in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            info = infos[impl.plugin_name]
            if info.error:
                continue
            added: list[tuple[str, type]] = []

            def register(obj: Any, _kind: str = kind, _added: list = added) -> None:
                problem = _check_class(_kind, obj)
                if problem:
                    raise TypeError(problem)
                holder = registry.entries[_kind].get(obj.name)
                if holder is not None and holder.plugin != info.name:
                    raise ValueError(f"{SINGULAR[_kind]} {obj.name!r} is already registered by plugin "
                                     f"{holder.plugin!r}")
                _added.append((obj.name, obj))

            try:
                impl.function(register=register)
            except Exception as exc:
                info.error = _short_error(exc)
                if _strict():
                    raise PluginError(f"plugin {info.name!r} failed in {hook_name}: {info.error}") from exc
                continue
            for obj_name, obj in added:
                registry.entries[kind][obj_name] = Entry(obj, info.name)
                info.registered.setdefault(kind, []).append(obj_name)
    # A plugin that failed part-way keeps nothing, so a half-registered plugin is never used.
    for info in infos.values():
        if info.error:
            for kind, names in info.registered.items():
                for n in names:
                    registry.entries[kind].pop(n, None)
    return registry


def _dist_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry()
    return _REGISTRY


def set_registry(registry: Registry | None) -> None:
    """Replace the process-wide registry (tests, and worker processes that rebuild it)."""
    global _REGISTRY
    _REGISTRY = registry
