"""The appliance's configuration files come from ``context/appliance/templates/`` through ``fl_render``:
values land verbatim, and a placeholder the caller left without a value fails the stage naming it."""

from __future__ import annotations

import re

from hostkit.paths import CONTEXT_DIR

APPLIANCE_DIR = CONTEXT_DIR / "appliance"
TEMPLATES = APPLIANCE_DIR / "templates"


def test_a_value_lands_verbatim(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    result = sandbox.bash(
        "fl_render openssl-server.cnf 'NAME=a&b \\1 $x' 'SANS=IP:127.0.0.1, DNS:x'\n",
    )
    assert result.returncode == 0, result.stderr
    assert "CN = a&b \\1 $x\n" in result.stdout
    assert "subjectAltName = IP:127.0.0.1, DNS:x\n" in result.stdout
    assert "{{" not in result.stdout


def test_a_placeholder_without_a_value_fails_naming_it(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    result = sandbox.bash("fl_render openssl-server.cnf NAME=x\n")
    assert result.returncode == 1
    assert "{{SANS}} was given no value" in sandbox.reason
    assert "openssl-server.cnf" in sandbox.reason


def test_a_missing_template_fails_naming_it(make_sandbox) -> None:
    sandbox = make_sandbox("superlink")
    result = sandbox.bash("fl_render no-such.conf\n")
    assert result.returncode == 1
    assert "missing template" in sandbox.reason and "no-such.conf" in sandbox.reason


def test_every_template_is_rendered_by_the_appliance_code() -> None:
    sources = [APPLIANCE_DIR / "service", *APPLIANCE_DIR.glob("lib/*.sh"), *APPLIANCE_DIR.glob("roles/*.sh")]
    code = "\n".join(path.read_text() for path in sources)
    for template in sorted(TEMPLATES.iterdir()):
        assert template.name in code, f"templates/{template.name} is used nowhere"
        keys = set(re.findall(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}", template.read_text()))
        # Each call: the rest of its line and the lines it continues onto with a trailing backslash.
        for call in re.findall(rf"fl_render {re.escape(template.name)}((?:\\\n|[^\n])*)", code):
            given = set(re.findall(r'"([A-Z_][A-Z0-9_]*)=', call))
            assert given == keys, f"{template.name}: has {sorted(keys)}, a call gives {sorted(given)}"
