"""One XML -> dict converter for OpenNebula's answers, in the two shapes its clients give.

- ``xml_to_dict(element)``: OpenNebula's Ruby ``XMLElement#to_hash`` (``one/src/oca/ruby/opennebula/
  xml_element.rb``): an element with children is a dict, a name repeated among siblings becomes a list, a
  leaf is its text, and an empty leaf is ``{}``. The OneGate and OneFlow servers answer in this shape.
- ``xml_to_dict(element, empty=None)``: what pyone's generated bindings hold for a template: the same, but
  an empty leaf (no text, or ``""``) is ``None``.

Comments and processing instructions are not elements and are skipped.

    >>> from lxml import etree
    >>> xml_to_dict(etree.fromstring("<VM><ID>3</ID><NIC><IP>x</IP></NIC><NIC><IP/></NIC></VM>"))
    {'ID': '3', 'NIC': [{'IP': 'x'}, {'IP': {}}]}
"""

from __future__ import annotations

from typing import Any

from lxml import etree

_EMPTY_HASH: Any = object()  # stands for a new ``{}`` per empty leaf (a shared default would be mutable)


def xml_to_dict(element: etree._Element, empty: Any = _EMPTY_HASH) -> Any:
    """The text of a leaf, or a dict of the children (lists for repeated names); ``empty`` for a leaf
    without text (``{}`` unless given)."""
    children = [child for child in element if isinstance(child.tag, str)]
    if not children:
        if element.text or (element.text == "" and empty is _EMPTY_HASH):
            return element.text
        return {} if empty is _EMPTY_HASH else empty
    result: dict[str, Any] = {}
    for child in children:
        value = xml_to_dict(child, empty)
        if child.tag not in result:
            result[child.tag] = value
        elif isinstance(result[child.tag], list):
            result[child.tag].append(value)
        else:
            result[child.tag] = [result[child.tag], value]
    return result
