"""OpenNebula templates in ONE syntax (``KEY = "value"``, ``VECTOR = [ K = "v", ... ]``).

What a marketplace app carries in ``VMTEMPLATE64`` and ``APPTEMPLATE64`` must be ONE syntax: OpenNebula's
CLI (``src/oca/ruby/opennebula/marketplaceapp_ext.rb``, ``export_image``) and pyone's ``marketapp.export``
helper decode it and *append* ``NAME = "..."`` and ``DISK = [ IMAGE_ID = ... ]`` lines before calling
``one.template.allocate``; XML followed by ONE-syntax lines is no template at all ("XML Template
malformed"). The layout follows upstream's market driver (``src/market_mad/remotes/one/monitor``,
``template_to_str`` and ``print_var``): upper-case names, every value double-quoted, a vector on one line as
``NAME = [ KEY = "value", ... ]``, and a ``"`` inside a value written ``\\"`` (oned's template scanner reads
``\\"`` back as ``"``). A value that ends in a backslash cannot be written in that syntax (the closing quote
would read as escaped) and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def quote(value: Any) -> str:
    """``"value"`` with ``"`` escaped as ``\\"`` (upstream's ``print_var``)."""
    if isinstance(value, bool):
        value = "YES" if value else "NO"
    text = str(value)
    if text.endswith("\\"):
        raise ValueError(f"a template value cannot end in a backslash in ONE syntax: {text!r}")
    return '"' + text.replace('"', '\\"') + '"'


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"template attribute name {name!r} is not valid")
    return name.upper()


def _attribute(name: str, value: Any) -> list[str]:
    if isinstance(value, Mapping):
        members = ", ".join(f"{_name(str(key))} = {quote(item)}" for key, item in value.items())
        return [f"{_name(name)} = [ {members} ]"]
    if isinstance(value, list | tuple):
        return [line for item in value for line in _attribute(name, item)]
    return [f"{_name(name)} = {quote(value)}"]


def render(template: Mapping[str, Any]) -> str:
    """``{"CPU": "1", "NIC": {"NETWORK_MODE": "auto"}}`` -> ``CPU = "1"`` and
    ``NIC = [ NETWORK_MODE = "auto" ]``, one attribute a line.

    A dict is a vector attribute, a list repeats the attribute; names are upper-cased as the market
    driver does.
    """
    lines = [line for key, value in template.items() for line in _attribute(str(key), value)]
    return "\n".join(lines) + "\n"
