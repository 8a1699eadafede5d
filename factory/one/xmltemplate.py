"""OpenNebula templates as XML (oned accepts XML wherever it accepts a template; the root name is ignored).

XML with CDATA leaves no quoting question open, unlike the ``KEY = "value"`` syntax, for values such as
base64 certificates or multi-line scripts. A value is a str/int/float, a dict (a vector attribute such as
NIC or CONTEXT) or a list (the attribute repeated).

Not for text another tool extends: a marketplace app's ``VMTEMPLATE64``/``APPTEMPLATE64`` get ONE-syntax
lines appended by the exporters, so they are written in ONE syntax (factory/one/onetemplate.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _cdata(text: str) -> str:
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _element(name: str, value: Any) -> str:
    if not _NAME.match(name):
        raise ValueError(f"template attribute name {name!r} is not valid")
    if isinstance(value, Mapping):
        inner = "".join(_element(str(key), item) for key, item in value.items())
        return f"<{name}>{inner}</{name}>"
    if isinstance(value, list | tuple):
        return "".join(_element(name, item) for item in value)
    if isinstance(value, bool):
        value = "YES" if value else "NO"
    return f"<{name}>{_cdata(str(value))}</{name}>"


def render(template: Mapping[str, Any], root: str = "TEMPLATE") -> str:
    """``{"NAME": "x", "NIC": [{"NETWORK_ID": 0}]}`` -> ``<TEMPLATE><NAME><![CDATA[x]]></NAME>...``"""
    return f"<{root}>" + "".join(_element(str(key), value) for key, value in template.items()) + f"</{root}>"
