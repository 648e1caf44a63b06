"""YAML parsing that remembers where every key and value is.

PyYAML's ``SafeLoader`` builds the node graph; we construct the Python data from it
ourselves so that each mapping key and value keeps its ``(line, column)`` (1-based)
and so that a key repeated in one mapping is an error instead of the last one
silently winning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from astromesh_ray.spec.base import YamlPath

Position = tuple[int, int]
"""``(line, column)``, both 1-based."""

_MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class YamlProblem:
    """A file that is not a single YAML mapping: syntax error, duplicate key, ..."""

    line: int | None
    column: int | None
    message: str
    hint: str | None = None
    path: YamlPath = ()


@dataclass
class ParsedYaml:
    """A YAML document as plain data plus the position of each key and value."""

    data: Any
    keys: dict[YamlPath, Position] = field(default_factory=dict)
    values: dict[YamlPath, Position] = field(default_factory=dict)

    def locate(self, path: YamlPath, *, key: bool = True) -> Position | None:
        """Position of ``path`` (its key, or its value with ``key=False``), else of the
        nearest enclosing path that was recorded."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            table = (self.keys, self.values) if key else (self.values, self.keys)
            for positions in table:
                if prefix in positions:
                    return positions[prefix]
        return None


def _pos(node: Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.parsed = ParsedYaml(data=None)
        self.problems: list[YamlProblem] = []
        self._stack: set[int] = set()

    def build(self, node: Node, path: YamlPath) -> Any:
        if id(node) in self._stack:
            line, column = _pos(node)
            self.problems.append(YamlProblem(line, column, "recursive alias"))
            return None
        self._stack.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return self._sequence(node, path)
            return self.loader.construct_object(node, deep=True)
        finally:
            self._stack.discard(id(node))

    def _sequence(self, node: SequenceNode, path: YamlPath) -> list[Any]:
        items = []
        for index, child in enumerate(node.value):
            self.parsed.keys[(*path, index)] = self.parsed.values[(*path, index)] = _pos(child)
            items.append(self.build(child, (*path, index)))
        return items

    def _mapping(self, node: MappingNode, path: YamlPath) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        # Merge keys (`<<: *base`) first: explicit keys of this mapping override them.
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                for source in sources:
                    merged = self.build(source, path)
                    if isinstance(merged, dict):
                        result.update(merged)
        first_seen: dict[Any, Position] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            if not isinstance(key_node, ScalarNode):
                line, column = _pos(key_node)
                self.problems.append(YamlProblem(line, column, "keys must be plain scalars"))
                continue
            key = self.loader.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                key = str(key)
            if key in first_seen:
                line, column = _pos(key_node)
                first = first_seen[key][0]
                self.problems.append(
                    YamlProblem(
                        line,
                        column,
                        f"duplicate key {key!r} (first given on line {first})",
                        "remove one of them; YAML would silently keep only the last",
                        (*path, key),
                    )
                )
                continue
            first_seen[key] = _pos(key_node)
            self.parsed.keys[(*path, key)] = _pos(key_node)
            self.parsed.values[(*path, key)] = _pos(value_node)
            result[key] = self.build(value_node, (*path, key))
        return result


def parse_yaml(text: str) -> tuple[ParsedYaml | None, list[YamlProblem]]:
    """Parse one YAML document that must be a mapping.

    Returns the parsed document (``None`` when it cannot be used) and the problems
    found: syntax errors, duplicate keys, an empty file, several documents, or a
    top level that is not a mapping.
    """
    loader = yaml.SafeLoader(text)
    try:
        if not loader.check_node():
            return None, [
                YamlProblem(
                    1,
                    1,
                    "the file is empty",
                    "an Agent starts with `apiVersion: astromesh/v1` and `kind: Agent`",
                )
            ]
        node = loader.get_node()
        if node is None:
            return None, [YamlProblem(1, 1, "the file is empty")]
        if loader.check_node():
            mark = loader.peek_event().start_mark  # type: ignore[no-untyped-call]
            return None, [
                YamlProblem(
                    mark.line + 1,
                    mark.column + 1,
                    "the file holds more than one YAML document",
                    "put each document in its own file",
                )
            ]
        if not isinstance(node, MappingNode):
            line, column = _pos(node)
            return None, [YamlProblem(line, column, "the document is not a mapping of keys")]
        builder = _Builder(loader)
        builder.parsed.values[()] = _pos(node)
        builder.parsed.data = builder.build(node, ())
        return builder.parsed, builder.problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = str(exc.problem or exc.context or "invalid YAML")
        if exc.problem and exc.context:
            started = exc.context_mark.line + 1 if exc.context_mark else None
            message += f" ({exc.context}{f' started on line {started}' if started else ''})"
        return None, [
            YamlProblem(
                mark.line + 1 if mark else None,
                mark.column + 1 if mark else None,
                f"YAML syntax error: {message}",
            )
        ]
    except yaml.YAMLError as exc:
        return None, [YamlProblem(None, None, f"YAML error: {exc}")]
    finally:
        loader.dispose()
