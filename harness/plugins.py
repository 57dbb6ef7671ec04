"""Plugin discovery and the registry of everything plugins provide.

Plugins come from the built-in modules below and from the ``kalm_bench`` entry-point group. Each plugin
is loaded and asked to register on its own, so one that raises is reported (``kalm-bench plugins``) and
skipped while the others keep working. ``KALM_BENCH_STRICT_PLUGINS=1`` turns any failure into an error
(for CI); ``KALM_BENCH_LOAD_PLUGINS=a,b`` loads only the named entry points (empty: none), and
``KALM_BENCH_PLUGIN_MODULES=pkg.mod,...`` loads importable modules as plugins without packaging them.

Names belong to whoever registered them first, and first-party plugins (the built-in modules and the entry
points kalm-bench itself declares for the plugins it ships) register before all others whatever their
names. A plugin that registers a name already taken (of any kind), or takes a loaded plugin's name, is
refused as a whole: a warning names both plugins and the name, ``kalm-bench plugins`` lists it as failed
with that reason, and ``KALM_BENCH_STRICT_PLUGINS=1`` makes it an error. Between two other plugins, the
first by entry-point name wins.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
import re
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import api, hookspecs
from .errors import PluginError, UserError

GROUP = "kalm_bench"
BUILTIN_PLUGINS = ("kalm_bench.builtin.executors", "kalm_bench.builtin.reporters", "kalm_bench.builtin.sources")
# Entry points of this distribution naming modules it installs are first-party, like the built-in modules.
FIRST_PARTY_DIST = "kalm-bench"

log = logging.getLogger("kalm_bench.plugins")

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
    first_party: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "distribution": self.dist, "version": self.version,
                "builtin": self.builtin, "first_party": self.first_party, "hooks": self.hooks,
                "registered": self.registered, "error": self.error}


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
            failed = "; ".join(f"{p.name!r} ({p.error})" for p in self.failures())
            hint = (f"; it may come from a plugin that failed to load: {failed} (see `kalm-bench plugins`)"
                    if failed else "")
            raise UserError(f"unknown {SINGULAR[kind]} {name!r}; valid: {valid}{hint}", file=file,
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


def build_registry(load_entrypoints: bool = True, extra: Iterable[tuple[str, Any]] = (),
                   strict: bool | None = None) -> Registry:
    """Create a plugin manager, load plugins one by one, and collect their registrations.

    ``extra`` is (name, plugin object) pairs registered after the others; tests use it. ``strict`` (default:
    ``KALM_BENCH_STRICT_PLUGINS``) raises on the first failure instead of recording it.
    """
    strict = _strict() if strict is None else strict
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    def add(name: str, module: str, loader: Any, *, dist: str | None = None, version: str | None = None,
            builtin: bool = False, first_party: bool = False) -> None:
        if name in infos:
            # A second plugin under a taken name (an entry point or module named like a loaded plugin) must
            # not replace the first one's record, which would switch the first one off.
            key = _free_name(infos, f"{name} [{dist or module}]")
            info = PluginInfo(name=key, module=module, dist=dist, version=version)
            infos[key] = info
            _refuse(info, strict, f"plugin {key!r} refused: the plugin name {name!r} is already taken by plugin "
                          f"{name!r} ({infos[name].dist or infos[name].module})")
            return
        info = PluginInfo(name=name, module=module, dist=dist, version=version, builtin=builtin,
                          first_party=builtin or first_party)
        infos[name] = info
        try:
            plugin = loader()
            pm.register(plugin, name=name)
            info.hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        except Exception as exc:  # a broken plugin must not break the others
            info.error = _short_error(exc)
            if isinstance(exc, ModuleNotFoundError) and first_party and not builtin:
                # Each first-party plugin's heavy dependencies are the extra named after it.
                info.error += f"; install them with: pip install 'kalm-bench[{name}]'"
            if strict:
                raise PluginError(f"plugin {name!r} failed to load: {info.error}") from exc

    # Load order is registration order: first-party plugins first (the built-in modules, then this
    # distribution's entry points), so no other plugin can take their names, whatever it is called; then
    # the other entry points by name, KALM_BENCH_PLUGIN_MODULES, and ``extra``.
    for module in BUILTIN_PLUGINS:
        add(module, module, lambda m=module: importlib.import_module(m), dist="kalm-bench",
            version=_dist_version("kalm-bench"), builtin=True)

    if load_entrypoints:
        allow = os.environ.get("KALM_BENCH_LOAD_PLUGINS")
        allowed = None if allow is None else {s.strip() for s in allow.split(",") if s.strip()}
        eps = [ep for ep in md.entry_points(group=GROUP) if allowed is None or ep.name in allowed]
        eps.sort(key=lambda e: (not is_first_party(e), e.name))
        seen: set[tuple[str, str, str | None]] = set()
        for ep in eps:
            dist_name = _dist_name(ep)
            if (ep.name, ep.value, dist_name) in seen:  # one distribution found twice on the path
                continue
            seen.add((ep.name, ep.value, dist_name))
            dist = getattr(ep, "dist", None)
            add(ep.name, ep.value, ep.load, dist=dist_name, version=dist.version if dist else None,
                first_party=is_first_party(ep))

    for module in filter(None, (m.strip() for m in os.environ.get("KALM_BENCH_PLUGIN_MODULES", "").split(","))):
        add(module, module, lambda m=module: importlib.import_module(m))

    for name, obj in extra:
        add(name, getattr(obj, "__name__", repr(obj)), lambda o=obj: o)

    registry = Registry(pm, infos)
    impls: dict[tuple[str, str], list[Any]] = {}
    for kind, (hook_name, _) in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            impls.setdefault((impl.plugin_name, kind), []).append(impl)

    # One plugin at a time, in load order (pluggy's hook order is not used: a plugin could change it with
    # tryfirst/trylast). A plugin's registrations are all kept or, when it fails, all dropped; a name that
    # is already registered stays with its holder and the newcomer is refused as a whole.
    for info in list(infos.values()):
        if info.error:
            continue
        staged: list[tuple[str, str, type]] = []
        hook_name = ""
        try:
            for kind, (hook_name, _) in KINDS.items():
                for impl in impls.get((info.name, kind), []):

                    def register(obj: Any, _kind: str = kind) -> None:
                        problem = _check_class(_kind, obj)
                        if problem:
                            raise TypeError(problem)
                        if any(k == _kind and n == obj.name for k, n, _ in staged):
                            raise ValueError(f"{SINGULAR[_kind]} {obj.name!r} is registered twice")
                        staged.append((_kind, obj.name, obj))

                    impl.function(register=register)
        except Exception as exc:
            info.error = _short_error(exc)
            if strict:
                raise PluginError(f"plugin {info.name!r} failed in {hook_name}: {info.error}") from exc
            continue
        taken = [(k, n, registry.entries[k][n].plugin) for k, n, _ in staged if n in registry.entries[k]]
        if taken:
            reason = "refused: " + "; ".join(f"{SINGULAR[k]} {n!r} is already registered by plugin {holder!r}"
                                             for k, n, holder in taken)
            if not strict:  # strict mode raises instead
                for k, n, holder in taken:
                    log.warning("plugin %r tried to register %s %r, already registered by plugin %r: %r is "
                                "refused and none of its registrations are used", info.name, SINGULAR[k], n,
                                holder, info.name)
            _refuse(info, strict, reason, warn=False)
            continue
        for k, n, obj in staged:
            registry.entries[k][n] = Entry(obj, info.name)
            info.registered.setdefault(k, []).append(n)

    # A failed or refused plugin keeps no hooks either, so none of them (e.g. its commands) is ever called.
    for info in infos.values():
        if info.error and pm.get_plugin(info.name) is not None:
            pm.unregister(name=info.name)
    return registry


def is_first_party(ep: md.EntryPoint) -> bool:
    """Whether an entry point ships in this distribution: declared by kalm-bench's own metadata and naming a
    module of a package kalm-bench installs."""
    dist = getattr(ep, "dist", None)
    if dist is None or re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower() != FIRST_PARTY_DIST:
        return False
    return ep.value.split(":", 1)[0].strip().split(".", 1)[0] in _shipped_packages(dist)


def _shipped_packages(dist: md.Distribution) -> set[str]:
    """Top-level packages a distribution installs (its ``top_level.txt``, else the first parts of its
    files)."""
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    return {f.parts[0] for f in dist.files or () if len(f.parts) > 1
            and not f.parts[0].endswith((".dist-info", ".egg-info", ".data"))}


def _dist_name(ep: md.EntryPoint) -> str | None:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else None


def _free_name(infos: dict[str, PluginInfo], name: str) -> str:
    key, i = name, 2
    while key in infos:
        key, i = f"{name} #{i}", i + 1
    return key


def _refuse(info: PluginInfo, strict: bool, reason: str, warn: bool = True) -> None:
    """Record a refused plugin: a warning line, or an error in strict mode."""
    info.error = reason
    if warn and not strict:
        log.warning("%s", reason)
    if strict:
        raise PluginError(f"plugin {info.name!r} {reason}" if reason.startswith("refused") else reason)


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
