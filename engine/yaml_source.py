"""Load YAML into plain data while remembering where every key and value stands in the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.errors import PipelineInvalid, Problem

try:  # the C loader is faster, but the pure one gives the same marks
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

YamlPath = tuple[str | int, ...]


def format_path(path: YamlPath) -> str:
    """``('syncs', 'loads', 'key', 0)`` -> ``syncs.loads.key[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Located:
    """Parsed YAML data plus the 1-based line and column of every value and key by path."""

    file: str
    data: Any
    values: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: YamlPath, *, key: bool = False) -> tuple[int, int]:
        """The position of the value at ``path`` (or of its key), else of its nearest ancestor."""
        table = self.keys if key else self.values
        probe = tuple(path)
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), (1, 1))

    def problem(self, path: YamlPath, message: str, *, key: bool = False) -> Problem:
        """A problem located at ``path``."""
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, format_path(path), message)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def load_located(path: Path, display: str | None = None) -> Located:
    """Parse ``path``; a syntax error or a duplicate key raises :class:`PipelineInvalid`."""
    name = display or str(path)
    text = path.read_text(encoding="utf-8")
    return loads_located(text, name)


def loads_located(text: str, name: str) -> Located:
    """Parse YAML text; see :func:`load_located`."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PipelineInvalid([Problem(name, line, col, "", f"YAML syntax: {exc.problem}")]) from exc
    located = Located(name, None)
    problems: list[Problem] = []
    if root is None:
        located.data = {}
        return located
    constructor = yaml.SafeLoader("")

    def build(node: yaml.Node, path: YamlPath) -> Any:
        located.values[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    problems.append(Problem(name, *_mark(key_node), format_path(path),
                                            "YAML merge keys (<<) are not supported; repeat the values"))
                    continue
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    key = str(key)
                child = (*path, key)
                if key in out:
                    problems.append(Problem(name, *_mark(key_node), format_path(child),
                                            f"duplicate key '{key}'"))
                located.keys[child] = _mark(key_node)
                out[key] = build(value_node, child)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        return constructor.construct_object(node, deep=True)

    located.data = build(root, ())
    if problems:
        raise PipelineInvalid(problems)
    return located
