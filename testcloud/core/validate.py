"""The two checks every allocate makes first: the template parses, the name is one oned accepts."""

from __future__ import annotations

from testcloud.core import errors
from testcloud.core.errors import OneError
from testcloud.core.template import Template, TemplateParseError

INVALID_NAME_CHARS = "&|:\\\";/'#{}$<>\t\n\v\f\r"


def check_name(name: str) -> str | None:
    """``PoolObjectSQL::name_is_valid``: the reason the name is refused, or None."""
    if not name:
        return "Invalid NAME, it cannot be empty"
    for char in name:
        if char in INVALID_NAME_CHARS:
            return f"Invalid NAME, char '{char}' is not allowed"
    if len(name) > 128:
        return "Invalid NAME, max length is 128 chars"
    return None


def parse_template(text_in: str, code: int = errors.INTERNAL) -> Template:
    """``Template::parse_str_or_xml``, its failure reported with ``code`` (INTERNAL for allocations)."""
    try:
        return Template.parse(text_in)
    except TemplateParseError as error:
        raise OneError(code, str(error)) from None
