"""Bounded YAML reading for user files: suites, their includes and ``-x`` override values.

A suite is a small hand-written file, so anything far outside that shape is refused with a
:class:`UserError` naming the file, the field and the line, before it can take much time or memory:

* files over :data:`MAX_FILE_BYTES`, files that are not UTF-8 text, directories, devices, link loops;
* nesting deeper than :data:`MAX_DEPTH` (found while parsing, before a node tree is built);
* more than :data:`MAX_NODES` values once aliases are expanded (the "billion laughs" alias bomb), and
  aliases to an enclosing node;
* duplicate mapping keys (YAML would silently keep the last one) and integers of more than
  :data:`MAX_INT_DIGITS` digits.

libyaml's C parser is used when PyYAML was built with it.
"""

from __future__ import annotations

import codecs
import errno
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # PyYAML without libyaml
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

MAX_FILE_BYTES = 1 << 20  # 1 MiB
MAX_DEPTH = 64
MAX_NODES = 100_000  # values in one suite (all its files, aliases expanded)
MAX_INT_DIGITS = 30

_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Budget:
    """Values (and files) read so far for one suite, over all its files and overrides."""

    def __init__(self, max_nodes: int = MAX_NODES):
        self.max_nodes = max_nodes
        self.nodes = 0
        self.files = 0


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _short_loc(loc: tuple, keep: int = 8) -> str:
    return format_loc(loc) if len(loc) <= keep else format_loc(loc[:keep]) + "…"


def read_text(path: Path, what: str = "suite file", suffix: str = "") -> str:
    """A small regular UTF-8 text file's contents; ``suffix`` ends each message (e.g. where it was included)."""
    def fail(message: str) -> UserError:
        return UserError(message + suffix, file=path)

    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise fail(f"{what} is a symbolic link loop") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise fail(f"{what} not found") from None
        raise fail(f"cannot read the {what}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise fail(f"is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"not a regular file (a {what} is a YAML text file)")
    if st.st_size > MAX_FILE_BYTES:
        raise fail(f"{what} too large ({st.st_size / (1 << 20):.1f} MiB; at most {MAX_FILE_BYTES >> 20} MiB)")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read the {what}: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise fail(f"{what} too large (more than {MAX_FILE_BYTES >> 20} MiB)")
    return decode(data, path, what, suffix)


def decode(data: bytes, path: Path | str, what: str = "suite file", suffix: str = "") -> str:
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise UserError(f"{what} is {name} text; save it as UTF-8{suffix}", file=path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at line {line}, column {column} "
                        f"(save the {what} as UTF-8){suffix}", file=path) from None
    return text[1:] if text.startswith("\ufeff") else text


def _yaml_error(exc: yaml.YAMLError, text: str, file: Any, suffix: str) -> UserError:
    """One line for any PyYAML error (theirs span several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    if isinstance(exc, yaml.reader.ReaderError):
        pos = min(max(int(exc.position), 0), len(text))
        line = text.count("\n", 0, pos) + 1
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        what = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        return UserError(f"invalid YAML at line {line}, column {column}: unacceptable character {what} "
                         f"({exc.reason}){suffix}", file=file)
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    message = problem or getattr(exc, "context", None) or str(exc)
    if getattr(exc, "context", None) and problem:
        message = f"{exc.context}: {problem}"
    return UserError(f"invalid YAML{at}: {' '.join(str(message).split())}{suffix}", file=file)


def _scan(text: str, file: Any, prefix: tuple, budget: Budget, suffix: str) -> None:
    """Walk the parser's events without building anything: stop at the first value nested too deeply,
    and at too many values (each alias counts once here; :func:`_check` counts their expansion)."""
    frames: list[list[Any]] = []  # [kind, loc, key, want_key, index]
    count = 0

    def here() -> tuple:
        if not frames:
            return prefix
        kind, loc, key, want_key, index = frames[-1]
        if kind == "seq":
            return loc + (index,)
        return loc + (("?" if want_key else key),)

    def done() -> None:
        if frames:
            f = frames[-1]
            if f[0] == "seq":
                f[4] += 1
            else:
                f[3] = not f[3]

    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            count += 1
            if count > budget.max_nodes - budget.nodes:
                raise UserError(f"more than {budget.max_nodes} values (at line {event.start_mark.line + 1}); a suite "
                                f"needs far fewer{suffix}", file=file, field=_short_loc(here()) or None)
            key_position = bool(frames) and frames[-1][0] == "map" and frames[-1][3]
            if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent)):
                if key_position:
                    frames[-1][2] = event.value if isinstance(event, yaml.ScalarEvent) else "*" + str(event.anchor)
                done()
            else:
                loc = here()
                frames.append(["seq" if isinstance(event, yaml.SequenceStartEvent) else "map", loc, None, True, 0])
                if len(frames) > MAX_DEPTH:
                    raise UserError(f"nested too deep (more than {MAX_DEPTH} levels at line "
                                    f"{event.start_mark.line + 1}){suffix}", file=file, field=_short_loc(loc) or None)
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            frames.pop()
            done()


def _check(root: yaml.Node, file: Any, prefix: tuple, budget: Budget, suffix: str) -> None:
    """Walk the node tree as construction would expand it: aliases count each time they are used, an alias
    inside the node it names is refused, and so are duplicate keys and huge integers."""
    stack: list[tuple[yaml.Node, tuple, int, bool]] = [(root, prefix, 0, False)]
    active: set[int] = set()
    while stack:
        node, loc, depth, leaving = stack.pop()
        if leaving:
            active.discard(id(node))
            continue
        line = node.start_mark.line + 1
        if id(node) in active:
            raise UserError(f"alias at line {line} refers to a node that contains it{suffix}", file=file,
                            field=_short_loc(loc) or None)
        budget.nodes += 1
        if budget.nodes > budget.max_nodes:
            raise UserError(f"more than {budget.max_nodes} values once YAML aliases are expanded (line {line}); a "
                            f"suite needs far fewer{suffix}", file=file, field=_short_loc(loc) or None)
        if depth > MAX_DEPTH:
            raise UserError(f"nested too deep through aliases (more than {MAX_DEPTH} levels at line {line}){suffix}",
                            file=file, field=_short_loc(loc) or None)
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _INT_TAG and len(node.value) > MAX_INT_DIGITS:
                raise UserError(f"integer of {len(node.value)} digits at line {line} is too large{suffix}",
                                file=file, field=_short_loc(loc) or None)
            continue
        active.add(id(node))
        stack.append((node, loc, depth, True))
        if isinstance(node, yaml.SequenceNode):
            for i, child in reversed(list(enumerate(node.value))):
                stack.append((child, loc + (i,), depth + 1, False))
        elif isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], str] = {}
            children = []
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    key = key_node.value
                    at = f"line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}"
                    if key_node.tag != _MERGE_TAG:
                        if (key_node.tag, key) in seen:
                            raise UserError(f"duplicate key {key!r} at {at} (first at {seen[key_node.tag, key]}); "
                                            f"YAML would keep only the last{suffix}", file=file,
                                            field=_short_loc(loc + (key,)))
                        seen[key_node.tag, key] = at
                else:
                    key = "?"
                    children.append((key_node, loc + (key,), depth + 1, False))
                children.append((value_node, loc + (key,), depth + 1, False))
            stack.extend(reversed(children))


def load(text: str, file: Any, *, prefix: tuple = (), budget: Budget | None = None, suffix: str = "") -> Any:
    """Parse one YAML document within the bounds above; errors name ``file`` and the field under ``prefix``."""
    budget = budget or Budget()
    try:
        _scan(text, file, prefix, budget, suffix)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check(node, file, prefix, budget, suffix)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, text, file, suffix) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a constructor's own failure
        raise UserError(f"invalid YAML value: {' '.join(str(exc).split())[:200]}{suffix}", file=file) from None


def load_file(path: Path, *, budget: Budget | None = None, what: str = "suite file", suffix: str = "") -> Any:
    """:func:`read_text` then :func:`load`."""
    return load(read_text(path, what, suffix), path, budget=budget, suffix=suffix)
