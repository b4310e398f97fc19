"""Read YAML from outside as plain data, remembering where every value came from.

Playbooks are written by people and may arrive from anywhere, so this reader is
strict on purpose. It builds values from the parser's events itself instead of
using a YAML constructor:

- scalars resolve as in YAML 1.2 (`no` and `on` stay strings, `22:00` is not a
  base-60 number), keys always stay strings;
- anchors and aliases, custom tags, duplicate keys and several documents in one
  file are refused;
- size, nesting depth and node count are bounded, and no step recurses, so a
  hostile file is refused early instead of exhausting memory or the stack.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from orchestrator.problems import START, Position

MAX_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000

Path_ = tuple[str | int, ...]

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True}
_BOOL |= {"false": False, "False": False, "FALSE": False}
# Numbers longer than these stay text: no playbook needs them, and Python refuses
# to read integers of thousands of digits.
_INT = re.compile(r"^[-+]?[0-9]{1,30}$")
_OCT = re.compile(r"^0o[0-7]{1,30}$")
_HEX = re.compile(r"^0x[0-9a-fA-F]{1,30}$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = {
    ".inf": float("inf"),
    "+.inf": float("inf"),
    "-.inf": float("-inf"),
    ".nan": float("nan"),
}
_STANDARD_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}

try:
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _Loader = yaml.SafeLoader


class YamlProblem(Exception):
    """The text is not YAML that referloop accepts; says where and why."""

    def __init__(self, position: Position, message: str) -> None:
        self.position = position
        self.message = message
        super().__init__(message)


@dataclass
class Document:
    """Plain data read from YAML, with the position of each value and each key.

    `values[path]` is where the value at `path` starts; `keys[path]` is where the
    key that leads to it starts (the better place to report an unknown key).
    """

    data: Any
    values: dict[Path_, Position] = field(default_factory=dict)
    keys: dict[Path_, Position] = field(default_factory=dict)
    block_scalars: set[Path_] = field(default_factory=set)

    def position(self, path: Path_, *, of_key: bool = False) -> Position:
        """Where `path` is, or its nearest enclosing value that has a place."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if of_key and end == len(path) and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return START

    def locate(self, loc: tuple[Any, ...]) -> Path_:
        """Map a validator's location (which may name union members) to a path."""
        path: Path_ = ()
        for part in loc:
            candidate = (*path, part)
            if candidate in self.values or candidate in self.keys:
                path = candidate
        return path


def parse(text: str) -> Document:
    """Read one YAML document from `text`.

    Raises:
        YamlProblem: the text is too large, not YAML, or uses a refused feature.
    """
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        limit_kib = MAX_BYTES // 1024
        raise YamlProblem(START, f"file is larger than {limit_kib} KiB; split it")

    try:
        events = list(yaml.parse(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        raise YamlProblem(_mark_position(exc.problem_mark), _yaml_message(exc)) from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(START, f"not readable as YAML: {exc}") from exc
    except (UnicodeError, ValueError) as exc:
        raise YamlProblem(START, "not readable as UTF-8 text") from exc

    return _Builder().build(events)


class _Builder:
    """Turn a list of parser events into a Document, without recursion."""

    def __init__(self) -> None:
        self.document = Document(data=None)
        self.stack: list[_Frame] = []
        self.nodes = 0
        self.documents = 0

    def build(self, events: list[yaml.Event]) -> Document:
        for event in events:
            self._take(event)
        if self.documents == 0:
            raise YamlProblem(START, "file is empty; a playbook is a YAML mapping")
        return self.document

    def _take(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise YamlProblem(
                    _mark_position(event.start_mark),
                    "a second YAML document (`---`); write one playbook per file",
                )
            return
        if isinstance(event, yaml.AliasEvent):
            raise YamlProblem(
                _mark_position(event.start_mark),
                "aliases (`*name`) are not allowed; repeat the value instead",
            )
        if isinstance(event, yaml.NodeEvent):
            self._check_node(event)
        if isinstance(event, yaml.ScalarEvent):
            self._add(event, _scalar(event), event.start_mark)
        elif isinstance(event, yaml.MappingStartEvent):
            self._open(event, {})
        elif isinstance(event, yaml.SequenceStartEvent):
            self._open(event, [])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            self._close()

    def _check_node(self, event: yaml.NodeEvent) -> None:
        where = _mark_position(event.start_mark)
        if event.anchor is not None:
            raise YamlProblem(
                where, f"anchors (`&{event.anchor}`) are not allowed; repeat the value"
            )
        tag = getattr(event, "tag", None)
        if tag not in (None, "!") and tag not in _STANDARD_TAGS:
            raise YamlProblem(where, f"the tag `{tag}` is not allowed; remove it")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlProblem(where, f"more than {MAX_NODES} values; split the file")

    def _open(self, event: yaml.CollectionStartEvent, container: Any) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise YamlProblem(
                _mark_position(event.start_mark),
                f"nested deeper than {MAX_DEPTH} levels; flatten it",
            )
        path = self._add(event, container, event.start_mark)
        if path is not None:
            self.stack.append(_Frame(path, container))

    def _close(self) -> None:
        frame = self.stack.pop()
        if isinstance(frame.container, dict) and frame.pending_key is not None:
            raise YamlProblem(START, "a key without a value")

    def _add(self, event: yaml.NodeEvent, value: Any, mark: Any) -> Path_ | None:
        position = _mark_position(mark)
        if not self.stack:
            self.document.data = value
            self.document.values[()] = position
            return ()

        frame = self.stack[-1]
        if isinstance(frame.container, list):
            path = (*frame.path, len(frame.container))
            frame.container.append(value)
            self._record(path, position, event)
            return path

        if frame.pending_key is None:
            frame.pending_key = self._key(event, value, frame, position)
            return None
        key, key_position = frame.pending_key
        frame.pending_key = None
        path = (*frame.path, key)
        frame.container[key] = value
        self.document.keys[path] = key_position
        self._record(path, position, event)
        return path

    def _key(
        self, event: yaml.NodeEvent, value: Any, frame: _Frame, position: Position
    ) -> tuple[str, Position]:
        if not isinstance(event, yaml.ScalarEvent):
            raise YamlProblem(position, "a key must be a plain word, not a list or map")
        key = event.value
        if key in frame.container:
            raise YamlProblem(position, f"the key `{key}` appears twice; keep one")
        return key, position

    def _record(self, path: Path_, position: Position, event: yaml.NodeEvent) -> None:
        self.document.values[path] = position
        if isinstance(event, yaml.ScalarEvent) and event.style in ("|", ">"):
            self.document.block_scalars.add(path)


@dataclass
class _Frame:
    path: Path_
    container: Any
    pending_key: tuple[str, Position] | None = None


def _scalar(event: yaml.ScalarEvent) -> Any:
    """Resolve a scalar as YAML 1.2's core schema does; quoted ones stay strings."""
    text = event.value
    plain = not event.style and event.implicit[0]  # libyaml says '', PyYAML None
    if not plain:
        return text
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _FLOAT.match(text):
        return float(text)
    return _SPECIAL_FLOAT.get(text.lower(), text)


def _mark_position(mark: Any) -> Position:
    if mark is None:
        return START
    return Position(mark.line + 1, mark.column + 1)


def _yaml_message(exc: yaml.MarkedYAMLError) -> str:
    problem = exc.problem or "not valid YAML"
    context = f" {exc.context}" if exc.context else ""
    return f"not valid YAML: {problem}{context}"
