"""Reading the YAML files users write (matrix.yaml, params.yaml) strictly: UTF-8 text, no duplicate keys.

``load_file(path, default, parse)`` is the one way a model file is read: the path shown in messages
(``display``), the strict parse, then the model's own ``parse(data, source)``.

PyYAML's ``safe_load`` lets the last of two equal keys win silently (``cross_version: false`` followed by
``cross_version: true`` is ``true``); here that is an error naming the key and both lines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hostkit.errors import ConfigError
from hostkit.paths import REPO_ROOT

T = TypeVar("T")


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping holds one key twice."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _value_node in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let PyYAML report it as it does
                continue
            if first is not None:
                raise DuplicateKeyError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (first on line {first.line + 1}; the last would win silently)",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def read_text(path: Path, source: str) -> str:
    """The UTF-8 text of a user's file; ConfigError (exit 2) when missing, unreadable or not UTF-8."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(source, "", "is a directory, not a file") from None
    except OSError as error:
        raise ConfigError(source, "", f"cannot read: {error.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        byte = data[error.start : error.start + 1].hex()
        problem = f"not UTF-8 text (byte 0x{byte} at offset {error.start})"
        raise ConfigError(source, f"line {line}", problem) from None


def load_yaml(path: Path, source: str) -> Any:
    """Parse a user's YAML file; ConfigError names the line of a syntax error or a duplicate key."""
    text = read_text(path, source)
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        if isinstance(error, DuplicateKeyError):
            raise ConfigError(source, where, problem) from None
        raise ConfigError(source, where, f"YAML syntax error: {problem}") from None


def display(path: Path) -> str:
    """``path`` as messages name it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def load_file(path: Path | None, default: Path, parse: Callable[[Any, str], T]) -> T:
    """Read ``path`` (``default`` when None) strictly and hand the data to ``parse(data, source)``;
    every problem is a ConfigError naming the file as ``display`` shows it."""
    path = default if path is None else Path(path)
    source = display(path)
    return parse(load_yaml(path, source), source)
