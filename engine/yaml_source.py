"""Load YAML into plain data while remembering where every key and value stands in the file.

Pipeline and mapping files may come from anywhere, so loading is bounded and strict: a file above
:data:`MAX_FILE_BYTES` is refused unread, bytes must be UTF-8 text, aliases may stand for at most
:data:`MAX_ALIAS_VALUES` values in all, lists and mappings nest at most :data:`MAX_DEPTH` deep, and
only the plain YAML tags in :data:`ALLOWED_TAGS` are accepted. Every refusal is a located
:class:`~engine.errors.Problem`, never a traceback.
"""

from __future__ import annotations

import codecs
import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, cast

import yaml

from engine.errors import PipelineInvalid, Problem

try:  # the C parser is faster, but the pure one gives the same events and marks
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

YamlPath = tuple[str | int, ...]

MAX_FILE_BYTES = 10 * 1024 * 1024
"""The largest pipeline or mapping file read (10 MB); a larger one is refused before it is read."""

MAX_ALIAS_VALUES = 10_000
"""How many values the aliases (``*name``) of one file may stand for together."""

MAX_DEPTH = 100
"""How deeply lists and mappings may nest."""

_CORE = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(_CORE + name for name in ("str", "int", "float", "bool", "null"))
ALLOWED_TAGS = tuple(_CORE + name for name in ("str", "int", "float", "bool", "null", "seq", "map"))
"""The only explicit tags accepted (``!!str``, ``!!int``, ``!!float``, ``!!bool``, ``!!null``, ``!!seq``, ``!!map``)."""

_STR = _CORE + "str"
_MERGE = _CORE + "merge"

# YAML's printable characters (the set libyaml checks); checked first so a bad one is reported at its line.
_NOT_PRINTABLE = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))

# libyaml gives up on a key longer than this and then reports the ':' as out of place.
_MAX_SIMPLE_KEY = 1024


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


def _pos(mark: Any) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _tag_name(tag: str) -> str:
    return "!!" + tag[len(_CORE):] if tag.startswith(_CORE) else tag


def _byte_position(raw: bytes, offset: int) -> tuple[int, int]:
    """Line and column (in characters) of a byte offset."""
    start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, len(raw[start:offset].decode("utf-8", "replace")) + 1


def _decode(raw: bytes, name: str) -> str:
    """UTF-8 text, or a problem that names the line and byte offset of what is not text."""
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise PipelineInvalid([Problem(name, 1, 1, "", f"the file is {encoding} text; save it as UTF-8")])
    nul = raw.find(b"\x00")
    if nul >= 0:
        line, col = _byte_position(raw, nul)
        raise PipelineInvalid([Problem(name, line, col, "", f"not a text file: NUL byte at byte offset {nul}")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _byte_position(raw, exc.start)
        raise PipelineInvalid([Problem(
            name, line, col, "", f"not valid UTF-8: byte 0x{raw[exc.start]:02X} at byte offset {exc.start} "
                                 f"({exc.reason}); save the file as UTF-8")]) from None


def load_located(path: Path, display: str | None = None) -> Located:
    """Parse ``path``; an unreadable, oversized or non-text file, a syntax error, a duplicate key,
    a refused tag or an alias bomb raises :class:`PipelineInvalid`."""
    name = display or str(path)
    try:
        size = path.stat().st_size
        if size <= MAX_FILE_BYTES:
            with path.open("rb") as handle:
                # One byte more than allowed tells a file that grew since stat() without reading it all.
                raw = handle.read(MAX_FILE_BYTES + 1)
            size = len(raw)
    except OSError as exc:
        raise PipelineInvalid([Problem(name, 1, 1, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    if size > MAX_FILE_BYTES:
        raise PipelineInvalid([Problem(
            name, 1, 1, "", f"the file is {size / 2**20:.1f} MB; pipeline and mapping files may be at most "
                            f"{MAX_FILE_BYTES // 2**20} MB")])
    return loads_located(_decode(raw, name), name)


def loads_located(text: str, name: str) -> Located:
    """Parse YAML text; see :func:`load_located`."""
    bad = _NOT_PRINTABLE.search(text)
    if bad is not None:
        at = bad.start()
        line, col = text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at)
        message = f"character U+{ord(bad.group()):04X} is not allowed in YAML (not even quoted)"
        raise PipelineInvalid([Problem(name, line, col, "", message)])
    return _Builder(text, name).run()


def _long_key_start(text: str, index: int) -> int | None:
    """Where a key starts when the ':' at ``index`` ends one longer than YAML allows, else None."""
    if not 0 <= index < len(text) or text[index] != ":":
        return None
    start = text.rfind("\n", 0, index) + 1
    start = max(start, *(text.rfind(c, start, index) + 1 for c in "{[,"))
    while start < index and text[start] in " \t-?":
        start += 1
    return start if index - start > _MAX_SIMPLE_KEY else None


def _syntax_problem(exc: yaml.MarkedYAMLError, name: str, text: str) -> Problem:
    """A parser error located where the mistake most likely is, not only where the parser noticed it."""
    mark, context_mark, context = exc.problem_mark, exc.context_mark, exc.context or ""
    line, col = _pos(mark) if mark is not None else (1, 1)
    message = str(exc.problem)
    if mark is not None and context_mark is not None:
        noticed = f"line {mark.line + 1}, column {mark.column + 1}"
        opener = {"while parsing a flow sequence": "'['", "while parsing a flow mapping": "'{'"}.get(context)
        if opener and context_mark.line != mark.line:
            # An unclosed bracket is noticed lines later (often at the end of the file); the mistake is the bracket.
            line, col = _pos(context_mark)
            message = f"this {opener} is never closed ({message} up to {noticed})"
        elif context.endswith("quoted scalar") and "end of stream" in message:
            line, col = _pos(context_mark)
            message = f"this quoted text is never closed ({message})"
        elif context == "while scanning a simple key":
            line, col = _pos(context_mark)
            message = f"{message} after the key that starts here"
    if mark is not None:
        index = mark.index
        key_start = _long_key_start(text, index)
        if key_start is not None:
            # libyaml drops a key past its length limit and then finds the ':' out of place; say why.
            line, col = mark.line + 1, key_start - (text.rfind("\n", 0, index) + 1) + 1
            message = f"a key may be at most {_MAX_SIMPLE_KEY} characters long ({message})"
        if "maximum nesting depth" in message:
            message += f" (lists and mappings may nest at most {MAX_DEPTH} levels deep)"
        if 0 <= index < len(text) and text[index] == "\t" and "cannot start any token" in message:
            message = "a tab cannot indent YAML; indent with spaces"
        start = text.rfind("\n", 0, max(index, 0)) + 1
        end = text.find("\n", start)
        source_line = text[start:end if end >= 0 else len(text)]
        if "incompatible YAML document" in message:
            message += " (only YAML 1.1 and 1.2 are read)"
        if re.search(r"(^|[:\-]\s+|[\[,]\s*)\{\{", source_line) and "did not find expected" in message:
            message += "; a value starting with {{ must be quoted"
    return Problem(name, line, col, "", f"YAML syntax: {message}")


@dataclass
class _Anchor:
    """A value with an anchor (``&name``): its data, how many values it stands for, where its parts are."""

    data: Any
    size: int
    path: YamlPath
    log_start: int
    log_end: int
    where: tuple[int, int]


class _Builder:
    """Builds plain data from the parser's events, keeping every position and enforcing the limits."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        self.loader = _Loader(text)
        self.located = Located(name, None)
        self.problems: list[Problem] = []
        self.anchors: dict[str, _Anchor] = {}
        self.open_anchors: set[str] = set()
        # Positions recorded while an anchor is open, so an alias can repeat them under its own path.
        self.log: list[tuple[bool, YamlPath, tuple[int, int]]] = []
        self.alias_values = 0
        self.last_scalar: yaml.ScalarEvent | None = None

    def run(self) -> Located:
        try:
            self.loader.get_event()  # stream start
            data: Any = {}
            if not self.loader.check_event(yaml.StreamEndEvent):
                self.loader.get_event()  # document start
                data, _ = self.node((), 0)
                self.loader.get_event()  # document end
                if not self.loader.check_event(yaml.StreamEndEvent):
                    second = self.next_event()
                    self.fail(second.start_mark, (), "a file holds one YAML document; a second one starts here")
        except yaml.MarkedYAMLError as exc:
            raise PipelineInvalid([*self.problems, self.runaway_quote(exc)
                                   or _syntax_problem(exc, self.name, self.text)]) from None
        except yaml.YAMLError as exc:  # a reader error has no mark; the checks before parsing leave none expected
            raise PipelineInvalid([*self.problems, Problem(self.name, 1, 1, "", f"YAML: {exc}")]) from None
        finally:
            self.loader.dispose()
        if self.problems:
            raise PipelineInvalid(self.problems)
        self.located.data = data
        return self.located

    def next_event(self) -> yaml.Event:
        event = self.loader.get_event()
        if event is None:  # the parser ends every stream with a StreamEndEvent; this is only a guard
            raise yaml.YAMLError("unexpected end of the YAML stream")
        return event

    def peek(self) -> yaml.Event:
        event = self.loader.peek_event()
        if event is None:
            raise yaml.YAMLError("unexpected end of the YAML stream")
        return event

    def resolve(self, value: str, implicit: tuple[bool, bool] | None) -> str:
        """The tag YAML gives an untagged scalar (``5`` is an int, ``'5'`` a str)."""
        tag: str = self.loader.resolve(yaml.ScalarNode, value, implicit)  # type: ignore[no-untyped-call]
        return tag

    def runaway_quote(self, exc: yaml.MarkedYAMLError) -> Problem | None:
        """A quoted value whose closing quote is missing swallows lines up to the next quote, and the error
        shows only after it; point at the opening quote instead."""
        last, mark = self.last_scalar, exc.problem_mark
        if last is None or last.style not in ('"', "'") or mark is None:
            return None
        start, end = cast(Any, last.start_mark), cast(Any, last.end_mark)
        if start.line == end.line or end.line != mark.line:
            return None
        noticed = f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
        return Problem(self.name, *_pos(start), "", f"YAML syntax: the quoted text that starts here runs on to line "
                                                    f"{end.line + 1}; is its closing {last.style} missing? ({noticed})")

    def problem(self, mark: Any, path: YamlPath, message: str) -> None:
        self.problems.append(Problem(self.name, *_pos(mark), format_path(path), message))

    def fail(self, mark: Any, path: YamlPath, message: str) -> NoReturn:
        raise PipelineInvalid([*self.problems, Problem(self.name, *_pos(mark), format_path(path), message)])

    def record(self, is_key: bool, path: YamlPath, where: tuple[int, int]) -> None:
        (self.located.keys if is_key else self.located.values)[path] = where
        if self.open_anchors:
            self.log.append((is_key, path, where))

    def node(self, path: YamlPath, depth: int) -> tuple[Any, int]:
        """The next value's data and how many values it stands for (aliases expanded)."""
        event = self.next_event()
        mark = event.start_mark
        self.record(False, path, _pos(mark))
        if isinstance(event, yaml.AliasEvent):
            return self.alias(event, path)
        if not isinstance(event, (yaml.ScalarEvent, yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            raise yaml.YAMLError(f"unexpected {type(event).__name__}")  # the parser never sends one here
        anchor: str | None = event.anchor
        if anchor is not None:
            if anchor in self.anchors or anchor in self.open_anchors:
                first = self.anchors[anchor].where if anchor in self.anchors else None
                self.problem(mark, path, f"anchor '&{anchor}' is defined twice"
                                         + (f" (first at line {first[0]})" if first else ""))
            self.open_anchors.add(anchor)
            log_start = len(self.log)
        data: Any
        if isinstance(event, yaml.ScalarEvent):
            data, size = self.scalar(event, path), 1
        else:
            if depth >= MAX_DEPTH:
                self.fail(mark, path, f"lists and mappings nest more than {MAX_DEPTH} levels deep")
            wanted = _CORE + ("seq" if isinstance(event, yaml.SequenceStartEvent) else "map")
            if event.tag not in (None, "!", wanted):
                self.problem(mark, path, _tag_message(event.tag, "a list" if wanted.endswith("seq") else "a mapping"))
            if isinstance(event, yaml.SequenceStartEvent):
                data, size = self.sequence(path, depth)
            else:
                data, size = self.mapping(event, path, depth)
        if anchor is not None:
            self.open_anchors.discard(anchor)
            self.anchors[anchor] = _Anchor(data, size, path, log_start, len(self.log), _pos(mark))
        return data, size

    def alias(self, event: yaml.AliasEvent, path: YamlPath) -> tuple[Any, int]:
        name = str(event.anchor)
        anchor = self.anchors.get(name)
        if anchor is None:
            if name in self.open_anchors:
                self.fail(event.start_mark, path, f"alias '*{name}' stands inside the value it refers to")
            close = difflib.get_close_matches(name, list(self.anchors), 1, 0.6)
            hint = f" (did you mean '*{close[0]}'?)" if close else ""
            self.fail(event.start_mark, path, f"unknown alias '*{name}'{hint}; an alias must follow its anchor")
        # Checked before anything is copied, so a "billion laughs" file is refused without the memory it asks for.
        self.alias_values += anchor.size
        if self.alias_values > MAX_ALIAS_VALUES:
            self.fail(event.start_mark, path,
                      f"alias '*{name}' stands for {anchor.size:,} values; the aliases of a file may stand for "
                      f"at most {MAX_ALIAS_VALUES:,} values in all")
        cut = len(anchor.path)
        for is_key, inner, where in self.log[anchor.log_start:anchor.log_end]:
            self.record(is_key, (*path, *inner[cut:]), where)
        return copy.deepcopy(anchor.data), anchor.size

    def scalar(self, event: yaml.ScalarEvent, path: YamlPath) -> Any:
        self.last_scalar = event
        tag = event.tag
        if tag in (None, "!"):
            tag = self.resolve(event.value, event.implicit)
            if tag not in _SCALAR_TAGS:
                # A timestamp, '=' or '<<' read implicitly: text, as in YAML 1.2 and in JSON Schema.
                return event.value
        elif tag not in _SCALAR_TAGS:
            self.problem(event.start_mark, path, _tag_message(tag, "a single value"))
            return None
        if tag == _STR:
            return event.value
        try:
            return self.loader.yaml_constructors[tag](self.loader, yaml.ScalarNode(tag, event.value))
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, yaml.YAMLError):
            if event.tag in (None, "!"):  # only a number too long for Python's int() gets here
                self.problem(event.start_mark, path, f"number too large ({len(event.value):,} digits)")
            else:
                shown = event.value if len(event.value) <= 40 else event.value[:37] + "..."
                self.problem(event.start_mark, path, f"{shown!r} is not a valid {_tag_name(tag)}")
            return None

    def sequence(self, path: YamlPath, depth: int) -> tuple[list[Any], int]:
        items: list[Any] = []
        size = 1
        while not self.loader.check_event(yaml.SequenceEndEvent):
            item, count = self.node((*path, len(items)), depth + 1)
            items.append(item)
            size += count
        self.loader.get_event()
        return items, size

    def mapping(self, start: yaml.MappingStartEvent, path: YamlPath, depth: int) -> tuple[dict[str, Any] | None, int]:
        out: dict[str, Any] = {}
        size = 1
        unquoted_template = False
        while not self.loader.check_event(yaml.MappingEndEvent):
            key_mark: Any = self.peek().start_mark
            key = self.key(path, depth)
            if key is _TEMPLATE_KEY:
                if start.flow_style and key_mark.index == cast(Any, start.start_mark).index + 1:
                    unquoted_template = True  # '{{': reported once, for the whole value
                else:
                    self.problem(key_mark, path, _KEY_KIND)
            if isinstance(key, str):
                child = (*path, key)
                if key in out:
                    self.problem(key_mark, child, f"duplicate key '{key}'")
                self.record(True, child, _pos(key_mark))
                out[key], count = self.node(child, depth + 1)
                size += count
            else:  # the problem is recorded; read the value only to go on past it
                self.node((*path, "?"), depth + 1)
        self.loader.get_event()
        if unquoted_template:
            self.problem(start.start_mark, path, 'YAML reads an unquoted {{ ... }} as a mapping; put the template '
                                                 'in quotes: "{{ ... }}"')
            return None, size
        return out, size

    def key(self, path: YamlPath, depth: int) -> str | object:
        """A mapping key as text, or a marker object when the key is refused (the problem is recorded)."""
        event = self.peek()
        mark = event.start_mark
        if isinstance(event, yaml.ScalarEvent):
            self.loader.get_event()
            if event.tag is None and self.resolve(event.value, event.implicit) == _MERGE:
                self.problem(mark, path, "YAML merge keys (<<) are not supported; repeat the values")
                return _REFUSED_KEY
            value = self.scalar(event, path)
            if event.anchor is not None:  # a key may carry an anchor too, and an alias may stand for it as a key
                if event.anchor in self.anchors:
                    self.problem(mark, path, f"anchor '&{event.anchor}' is defined twice "
                                             f"(first at line {self.anchors[event.anchor].where[0]})")
                self.anchors[event.anchor] = _Anchor(value, 1, path, len(self.log), len(self.log), _pos(mark))
            return value if isinstance(value, str) else str(value)
        if isinstance(event, yaml.AliasEvent):
            self.loader.get_event()
            value, _ = self.alias(event, path)
            if not isinstance(value, (dict, list)):
                return value if isinstance(value, str) else str(value)
        else:
            self.skip()
            if isinstance(event, yaml.MappingStartEvent) and event.flow_style:
                return _TEMPLATE_KEY  # '{{ x }}': the caller knows whether its own '{' came right before
        self.problem(mark, path, _KEY_KIND)
        return _REFUSED_KEY

    def skip(self) -> None:
        """Read past one list or mapping without building it (a refused key)."""
        level = 0
        while True:
            event = self.next_event()
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                level += 1
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                level -= 1
            if level == 0:
                return


_REFUSED_KEY = object()
_TEMPLATE_KEY = object()
_KEY_KIND = "a key must be text or a number, not a list or a mapping"


def _tag_message(tag: str, kind: str) -> str:
    if tag in ALLOWED_TAGS:
        return f"tag '{_tag_name(tag)}' does not fit {kind}"
    return f"tag '{_tag_name(tag)}' is not allowed (allowed: {', '.join(_tag_name(t) for t in ALLOWED_TAGS)})"
