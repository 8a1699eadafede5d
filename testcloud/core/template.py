"""OpenNebula templates: the attribute model, both input syntaxes, and the output forms oned uses.

A template is a multimap of attributes, each either *single* (a string) or a *vector* (a map of strings).
oned keeps it in a ``std::multimap`` keyed by the upper-cased name, so output is sorted by name while
attributes of the same name keep their insertion order; vector members are sorted by key.

Input comes in two syntaxes (``Template::parse_str_or_xml``):

* ONE syntax: ``NAME = "value"``, ``NIC = [ NETWORK_ID = "0", IP = "1.2.3.4" ]``, ``#`` comments,
  multi-line double-quoted values with ``\\"`` escapes, repeated keys. The tokenizer below follows the
  rules of oned's flex scanner (longest match, unmatched characters skipped) and the error messages of
  its bison parser (``syntax error, unexpected X, expecting Y at line L, columns A:B``).
* XML: any root element; children with a single text/CDATA node are single attributes, children with
  element children are vectors (members with a text node), anything else is ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from lxml import etree

Value = str | dict[str, str]


class TemplateParseError(ValueError):
    """The text is not a template. ``str(error)`` is oned's message (``Parse error: ...``)."""


def normalise_name(name: str) -> str:
    """Attribute names as oned stores them: upper case, ``ONE_`` prefix when not a valid XML name."""
    upper = name.upper()
    if upper and (not (name[0].isalpha() or name[0] == "_") or upper.startswith("XML")):
        return "ONE_" + upper
    return upper


@dataclass
class Attribute:
    name: str
    value: Value

    @property
    def is_vector(self) -> bool:
        return isinstance(self.value, dict)


class Template:
    """An ordered multimap of attributes with oned's update semantics."""

    def __init__(self, attributes: Iterable[tuple[str, Value]] = ()) -> None:
        self._attrs: list[Attribute] = []
        for name, value in attributes:
            self.add(name, value)

    # ------------------------------------------------------------------ construction
    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse either syntax, as ``Template::parse_str_or_xml`` does, and trim values."""
        template = _parse_xml(text) if text.startswith("<") else _OneSyntaxParser(text).parse()
        template.trim()
        return template

    @classmethod
    def from_json(cls, data: list) -> Template:
        return cls((name, dict(value) if isinstance(value, dict) else value) for name, value in data)

    def to_json(self) -> list:
        return [[a.name, dict(a.value) if isinstance(a.value, dict) else a.value] for a in self._attrs]

    def copy(self) -> Template:
        return Template.from_json(self.to_json())

    # ------------------------------------------------------------------ access
    def __iter__(self) -> Iterator[Attribute]:
        return iter(self._attrs)

    def __len__(self) -> int:
        return len(self._attrs)

    def __contains__(self, name: str) -> bool:
        name = name.upper()
        return any(a.name == name for a in self._attrs)

    def sorted(self) -> list[Attribute]:
        return sorted(self._attrs, key=lambda a: a.name)

    def get_all(self, name: str) -> list[Attribute]:
        name = name.upper()
        return [a for a in self._attrs if a.name == name]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first *single* attribute of that name (vectors are not strings)."""
        for attr in self.get_all(name):
            if isinstance(attr.value, str):
                return attr.value
        return default

    def get_vector(self, name: str) -> dict[str, str] | None:
        for attr in self.get_all(name):
            if isinstance(attr.value, dict):
                return attr.value
        return None

    def vectors(self, name: str) -> list[dict[str, str]]:
        return [a.value for a in self.get_all(name) if isinstance(a.value, dict)]

    # ------------------------------------------------------------------ changes
    def add(self, name: str, value: Value) -> None:
        value = {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else str(value)
        self._attrs.append(Attribute(normalise_name(name), value))

    def replace(self, name: str, value: Value) -> None:
        self.erase(name)
        self.add(name, value)

    def erase(self, name: str) -> int:
        name = name.upper()
        before = len(self._attrs)
        self._attrs = [a for a in self._attrs if a.name != name]
        return before - len(self._attrs)

    def remove(self, attr: Attribute) -> None:
        self._attrs = [a for a in self._attrs if a is not attr]

    def merge(self, other: Template) -> None:
        """``Template::merge``: every name in ``other`` replaces all attributes of that name here;
        empty vectors only delete."""
        for name in {a.name for a in other}:
            self.erase(name)
        for attr in other:
            if isinstance(attr.value, dict) and not attr.value:
                continue
            self._attrs.append(Attribute(attr.name, dict(attr.value) if attr.is_vector else attr.value))

    def trim(self) -> None:
        for attr in self._attrs:
            if isinstance(attr.value, dict):
                attr.value = {k: v.strip() for k, v in attr.value.items()}
            else:
                attr.value = attr.value.strip()

    # ------------------------------------------------------------------ output
    def to_xml(self, root: str, order: list[str] | None = None) -> str:
        """``<ROOT><NAME><![CDATA[v]]></NAME>...</ROOT>``, sorted by name (or by ``order``)."""
        attrs = self.sorted()
        if order is not None:
            rank = {name: index for index, name in enumerate(order)}
            attrs = sorted(attrs, key=lambda a: rank.get(a.name, len(rank)))
        if not attrs:
            return f"<{root}/>"
        return f"<{root}>" + "".join(attribute_xml(a.name, a.value) for a in attrs) + f"</{root}>"

    def to_one(self) -> str:
        """ONE syntax that ``parse`` reads back to the same template."""
        lines = []
        for attr in self._attrs:
            if isinstance(attr.value, dict):
                members = ",\n".join(f"  {k} = {one_quote(v)}" for k, v in sorted(attr.value.items()))
                lines.append(f"{attr.name} = [\n{members} ]" if members else f"{attr.name} = [ ]")
            else:
                lines.append(f"{attr.name} = {one_quote(attr.value)}")
        return "\n".join(lines) + ("\n" if lines else "")


def one_quote(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------- XML out
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_safe(text: str) -> str:
    """Characters XML 1.0 cannot carry are replaced, so an answer always parses."""
    return _XML_INVALID.sub("\ufffd", text)


def cdata(text: str) -> str:
    """oned writes every template value as CDATA; a ``]]>`` inside is split across two sections."""
    return "<![CDATA[" + xml_safe(text).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text(value: object) -> str:
    """Escaped element text for the non-template elements (NAME, SOURCE, ...)."""
    s = xml_safe(str(value))
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class CData(str):
    """A value written as CDATA (oned's template values and most strings) rather than escaped text."""


def elements(*parts: str | tuple[str, object]) -> str:
    """oned's XML for a run of elements, in order. A part is XML already written (a string), or
    ``(tag, value)``: ``None`` an empty element ``<TAG/>``, a :class:`CData` as CDATA, a number as is, other
    text escaped, a list or tuple of parts the element's children."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        tag, value = part
        if value is None:
            out.append(f"<{tag}/>")
        elif isinstance(value, CData):
            out.append(f"<{tag}>{cdata(value)}</{tag}>")
        elif isinstance(value, int | float):
            out.append(f"<{tag}>{value}</{tag}>")
        elif isinstance(value, list | tuple):
            out.append(f"<{tag}>{elements(*value)}</{tag}>")
        else:
            out.append(f"<{tag}>{text(value)}</{tag}>")
    return "".join(out)


def element(tag: str, *children: str | tuple[str, object]) -> str:
    """``<TAG>children</TAG>`` (see :func:`elements`)."""
    return f"<{tag}>{elements(*children)}</{tag}>"


def attribute_xml(name: str, value: Value) -> str:
    if isinstance(value, dict):
        inner = "".join(f"<{k}>{cdata(v)}</{k}>" for k, v in sorted(value.items()) if k)
        return f"<{name}>{inner}</{name}>"
    return f"<{name}>{cdata(value)}</{name}>"


# ---------------------------------------------------------------------------------------------- XML in
_XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=False)


def _parse_xml(text_in: str) -> Template:
    try:
        root = etree.fromstring(text_in.encode("utf-8"), _XML_PARSER)
    except (etree.XMLSyntaxError, ValueError) as error:
        raise TemplateParseError("Parse error: XML Template malformed.") from error
    template = Template()
    for node in root:
        if not isinstance(node.tag, str):
            continue
        name = etree.QName(node).localname
        children = list(node)
        if not children and node.text is not None:  # exactly one text/CDATA node
            template.add(name, node.text)
            continue
        members = [c for c in children if isinstance(c.tag, str)]
        if not members:
            continue
        vector: dict[str, str] = {}
        for member in members:
            if member.text is not None:  # oned reads the member's first node when it is text
                vector[etree.QName(member).localname] = member.text
        template.add(name, vector)
    return template


# ---------------------------------------------------------------------------------------------- ONE syntax in
_T_EQUAL, _T_COMMA, _T_OBRACKET, _T_CBRACKET = "EQUAL", "COMMA", "OBRACKET", "CBRACKET"
_T_EQUAL_EMPTY, _T_CCDATA, _T_STRING, _T_VARIABLE, _T_END = (
    "EQUAL_EMPTY",
    "CCDATA",
    "STRING",
    "VARIABLE",
    "$end",
)

_INITIAL_RULES: list[tuple[str | None, re.Pattern[str]]] = [
    (None, re.compile(r"[ \t]*#[^\n]*\n")),  # comment line
    (None, re.compile(r"[ \t\n]+")),  # blanks
    (_T_VARIABLE, re.compile(r"[A-Za-z0-9_]+")),
    (_T_EQUAL, re.compile(r"[ \t]*=[ \t]*")),
    (_T_EQUAL_EMPTY, re.compile(r"[ \t]*=[ \t]*\n")),
    (_T_COMMA, re.compile(r"[ \t\n]*,[ \t\n]*")),
    (_T_CBRACKET, re.compile(r"[ \t\n]*\][ \t\n]*")),
]
_VALUE_OBRACKET = re.compile(r"[ \t]*\[[ \t\n]*")
_VALUE_CCDATA = re.compile(r"[^\n]*\]\]>[^\n]*")
_VALUE_STRING = re.compile(r"[^=#\s\[\],]+")


@dataclass
class _Token:
    kind: str
    value: str
    line: int
    first_column: int
    last_column: int


class _Scanner:
    """oned's template scanner: two states (INITIAL, VALUE), longest match, ties to the earlier rule."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0
        self.in_value = False
        self.line = 1
        self.column = 1

    def _advance(self, length: int) -> tuple[int, int, int]:
        chunk = self.source[self.pos : self.pos + length]
        first = self.column
        self.pos += length
        self.column += length
        self.line += chunk.count("\n")
        return self.line, first, self.column

    def next(self) -> _Token:
        while self.pos < len(self.source):
            kind, length, value = self._value_match() if self.in_value else self._initial_match()
            if length == 0:  # no rule matches: flex echoes the character and goes on
                self._advance(1)
                continue
            raw = self.source[self.pos : self.pos + length]
            line, first, last = self._advance(length)
            if kind is None:
                continue
            if kind in (_T_EQUAL,):
                self.in_value = True
            elif self.in_value:
                self.in_value = False
            if kind == _T_STRING:
                value = value.replace('\\"', '"')
            return _Token(kind, value if kind == _T_STRING else raw, line, first, last)
        return _Token(_T_END, "", self.line, self.column, self.column)

    def _initial_match(self) -> tuple[str | None, int, str]:
        best: tuple[str | None, int] = (None, 0)
        for kind, pattern in _INITIAL_RULES:
            match = pattern.match(self.source, self.pos)
            if match and len(match.group(0)) > best[1]:
                best = (kind, len(match.group(0)))
        return best[0], best[1], ""

    def _value_match(self) -> tuple[str | None, int, str]:
        candidates: list[tuple[str, int, str]] = []
        match = _VALUE_OBRACKET.match(self.source, self.pos)
        if match:
            candidates.append((_T_OBRACKET, len(match.group(0)), ""))
        match = _VALUE_CCDATA.match(self.source, self.pos)
        if match:
            candidates.append((_T_CCDATA, len(match.group(0)), ""))
        quoted = self._quoted_length()
        if quoted:
            candidates.append((_T_STRING, quoted, self.source[self.pos + 1 : self.pos + quoted - 1]))
        match = _VALUE_STRING.match(self.source, self.pos)
        if match:
            candidates.append((_T_STRING, len(match.group(0)), match.group(0)))
        best: tuple[str | None, int, str] = (None, 0, "")
        for candidate in candidates:  # rule order breaks ties: keep the first of equal length
            if candidate[1] > best[1]:
                best = candidate
        return best

    def _quoted_length(self) -> int:
        """Longest match of ``"([^"]|\\\\")*"``: up to the first quote not preceded by a backslash,
        or else the last backslash-quote."""
        source, start = self.source, self.pos
        if start >= len(source) or source[start] != '"':
            return 0
        last_escaped = 0
        index = start + 1
        while True:
            index = source.find('"', index)
            if index < 0:
                return last_escaped
            if source[index - 1] == "\\" and index - 1 > start:
                last_escaped = index + 1 - start
                index += 1
                continue
            return index + 1 - start


class _OneSyntaxParser:
    def __init__(self, source: str) -> None:
        self.scanner = _Scanner(source)
        self.token = self.scanner.next()
        self.template = Template()

    def _fail(self, *expected: str) -> TemplateParseError:
        token = self.token
        if token.kind == _T_CCDATA:
            return TemplateParseError("Parse error.")
        message = f"syntax error, unexpected {token.kind}"
        if expected:
            message += ", expecting " + " or ".join(expected)
        location = f" at line {token.line}, columns {token.first_column}:{token.last_column}"
        return TemplateParseError("Parse error: " + message + location)

    def _take(self, kind: str, *expected: str) -> _Token:
        if self.token.kind != kind:
            raise self._fail(*(expected or (kind,)))
        token = self.token
        self.token = self.scanner.next()
        return token

    def parse(self) -> Template:
        while self.token.kind != _T_END:
            if self.token.kind != _T_VARIABLE:
                raise self._fail(_T_END, _T_VARIABLE)
            self._attribute()
        return self.template

    def _attribute(self) -> None:
        name = self._take(_T_VARIABLE).value
        if self.token.kind == _T_EQUAL_EMPTY:
            self._take(_T_EQUAL_EMPTY)
            self.template.add(name, "")
            return
        self._take(_T_EQUAL, _T_EQUAL, _T_EQUAL_EMPTY)
        if self.token.kind == _T_STRING:
            self.template.add(name, self._take(_T_STRING).value)
            return
        if self.token.kind != _T_OBRACKET:
            raise self._fail(_T_OBRACKET, _T_CCDATA, _T_STRING)
        self._take(_T_OBRACKET)
        vector: dict[str, str] = {}
        if self.token.kind == _T_CBRACKET:
            self._take(_T_CBRACKET)
            self.template.add(name, vector)
            return
        while True:
            key = self._take(_T_VARIABLE, _T_CBRACKET, _T_VARIABLE).value.upper()
            self._take(_T_EQUAL)
            value = self._take(_T_STRING).value
            vector.setdefault(key, value)  # std::map::insert keeps the first of repeated keys
            if self.token.kind == _T_CBRACKET:
                self._take(_T_CBRACKET)
                break
            self._take(_T_COMMA, _T_COMMA, _T_CBRACKET)
        self.template.add(name, vector)
