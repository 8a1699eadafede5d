"""The release stage's text files (report pages, certification specs, metadata) are jinja2 templates in
``factory/release/templates/``, rendered here:

    render("certification/metadata.yaml.j2", role="superlink", side=side, ...)

Whitespace as written (``keep_trailing_newline``; block tags take their own line away), no autoescape:
a template escapes what it must itself (the ``esc`` filter is ``html.escape``), so the output is exactly
what the template spells.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES_DIR = Path(__file__).parent / "templates"


@cache
def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    environment.filters["esc"] = html.escape
    return environment


def render(name: str, **values: Any) -> str:
    return _environment().get_template(name).render(**values)
