"""The appliance parameters, declared once in ``images/params.yaml``, and everything generated from them.

From the declaration come:

- the in-guest defaults file ``params-<role>.sh`` (installed as ``/etc/one-appliance/flower/params.sh``),
- OpenNebula ``user_inputs`` / ``inputs_order`` and the CONTEXT entries of VM templates, OneFlow services and
  marketplace YAML,
- the parameter tables in README.md.

API (used by the other stages)::

    decl = load_params()                      # validated; ConfigError (exit 2) names file, field and problem
    guest_defaults("superlink")               # bash text of params-superlink.sh
    user_inputs("supernode")                  # {"ONEAPP_FL_SUPERLINK": "O|text|...| |", ...}
    inputs_order("supernode")                 # "ONEAPP_FL_TLS,ONEAPP_FL_LOG_LEVEL,..."
    context_entries("supernode")              # {"ONEAPP_FL_SUPERLINK": "$ONEAPP_FL_SUPERLINK", ...}
    readme_table("superlink")                 # Markdown table

Every function takes an optional ``decl`` so callers (and tests) can pass a declaration loaded from elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.model.yamlfile import load_file
from hostkit.errors import ConfigError
from hostkit.paths import PARAMS_FILE

ROLES = ("superlink", "supernode")
TYPES = ("text", "text64", "password", "boolean", "number", "list", "range")
STAGES = ("configure", "bootstrap")
README_BEGIN = "<!-- params:begin -->"
README_END = "<!-- params:end -->"

_NAME = re.compile(r"^ONEAPP_[A-Z0-9_]+$")
_PUBLISHED_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_INTEGER = re.compile(r"^-?[0-9]+$")
_RANGE = re.compile(r"^(-?[0-9]+)\.\.(-?[0-9]+)$")
_PARAM_FIELDS = ("name", "roles", "type", "default", "options", "stage", "mandatory", "description")
_REQUIRED_FIELDS = ("name", "roles", "type", "default", "stage", "mandatory", "description")


@dataclass(frozen=True)
class Param:
    """One ``ONEAPP_*`` parameter."""

    name: str
    roles: tuple[str, ...]
    type: str
    default: str
    options: tuple[str, ...]  # list: allowed values; range: ("min..max",); otherwise empty
    stage: str
    mandatory: bool
    description: str

    @property
    def options_text(self) -> str:
        """Options as OpenNebula writes them: ``a,b,c`` for a list, ``min..max`` for a range, else ``""``."""
        return ",".join(self.options)

    def user_input(self) -> str:
        """The OpenNebula user-input spec ``M|O|type|description|options|default``."""
        flag = "M" if self.mandatory else "O"
        options = self.options_text or " "
        return f"{flag}|{self.type}|{self.description}|{options}|{self.default}"


@dataclass(frozen=True)
class Published:
    """An attribute the appliance writes into its VM's USER_TEMPLATE through OneGate."""

    name: str
    roles: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class ParamsDecl:
    source: str
    params: tuple[Param, ...]
    published: tuple[Published, ...]

    def for_role(self, role: str) -> tuple[Param, ...]:
        _check_role(role)
        return tuple(param for param in self.params if role in param.roles)

    def published_for(self, role: str) -> tuple[Published, ...]:
        _check_role(role)
        return tuple(item for item in self.published if role in item.roles)


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (known: {', '.join(ROLES)})")


# ---------------------------------------------------------------------------------------------- loading


def load_params(path: Path | None = None) -> ParamsDecl:
    """Read and validate the declaration. Raises ConfigError naming the file, field and problem."""
    return load_file(path, PARAMS_FILE, parse_params)


def parse_params(data: Any, source: str = "params.yaml") -> ParamsDecl:
    """Validate an already-parsed declaration (a dict as YAML gives it)."""
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping with 'params' and 'published', got {_kind(data)}")
    unknown = sorted(set(data) - {"params", "published"})
    if unknown:
        raise ConfigError(source, unknown[0], "unknown top-level key (known: params, published)")
    raw_params = data.get("params")
    if not isinstance(raw_params, list) or not raw_params:
        raise ConfigError(source, "params", f"expected a non-empty list, got {_kind(raw_params)}")
    params: list[Param] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_params):
        param = _parse_param(raw, source, f"params[{index}]")
        if param.name in seen:
            raise ConfigError(source, f"params[{index}].name", f"duplicate parameter {param.name}")
        seen.add(param.name)
        params.append(param)
    raw_published = data.get("published", [])
    if not isinstance(raw_published, list):
        raise ConfigError(source, "published", f"expected a list, got {_kind(raw_published)}")
    published: list[Published] = []
    seen_published: set[str] = set()
    for index, raw in enumerate(raw_published):
        field = f"published[{index}]"
        if not isinstance(raw, dict):
            raise ConfigError(source, field, f"expected a mapping, got {_kind(raw)}")
        extra = sorted(set(raw) - {"name", "roles", "description"})
        if extra:
            known = "name, roles, description"
            raise ConfigError(source, f"{field}.{extra[0]}", f"unknown field (known: {known})")
        name = _string(raw, "name", source, field)
        if not _PUBLISHED_NAME.match(name):
            raise ConfigError(source, f"{field}.name", f"{name!r} is not an upper-case attribute name")
        if name in seen_published:
            raise ConfigError(source, f"{field}.name", f"duplicate published attribute {name}")
        seen_published.add(name)
        published.append(
            Published(
                name=name,
                roles=_roles(raw, source, field),
                description=_one_line(raw, "description", source, field),
            )
        )
    return ParamsDecl(source=source, params=tuple(params), published=tuple(published))


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}.get(
        type(value), type(value).__name__
    )


def _string(raw: dict[str, Any], key: str, source: str, field: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        hint = " (quote it in YAML)" if isinstance(value, bool | int | float) else ""
        raise ConfigError(source, f"{field}.{key}", f"expected a string, got {_kind(value)}{hint}")
    return value


def _one_line(raw: dict[str, Any], key: str, source: str, field: str) -> str:
    value = _string(raw, key, source, field).strip()
    if not value:
        raise ConfigError(source, f"{field}.{key}", "must not be empty")
    if "\n" in value or "|" in value:
        raise ConfigError(source, f"{field}.{key}", "must be one line without '|' (OpenNebula's separator)")
    return value


def _roles(raw: dict[str, Any], source: str, field: str) -> tuple[str, ...]:
    roles = raw.get("roles")
    if not isinstance(roles, list) or not roles or not all(isinstance(role, str) for role in roles):
        raise ConfigError(source, f"{field}.roles", f"expected a non-empty list of roles, got {_kind(roles)}")
    for role in roles:
        if role not in ROLES:
            raise ConfigError(source, f"{field}.roles", f"unknown role {role!r} (known: {', '.join(ROLES)})")
    if len(set(roles)) != len(roles):
        raise ConfigError(source, f"{field}.roles", "lists a role twice")
    return tuple(roles)


def _parse_param(raw: Any, source: str, field: str) -> Param:
    if not isinstance(raw, dict):
        raise ConfigError(source, field, f"expected a mapping, got {_kind(raw)}")
    extra = sorted(set(raw) - set(_PARAM_FIELDS))
    if extra:
        raise ConfigError(source, f"{field}.{extra[0]}", f"unknown field (known: {', '.join(_PARAM_FIELDS)})")
    for key in _REQUIRED_FIELDS:
        if key not in raw:
            raise ConfigError(source, f"{field}.{key}", "missing")
    name = _string(raw, "name", source, field)
    if not _NAME.match(name):
        raise ConfigError(source, f"{field}.name", f"{name!r} must look like ONEAPP_UPPER_CASE")
    field = f"{field}({name})"
    kind = _string(raw, "type", source, field)
    if kind not in TYPES:
        raise ConfigError(source, f"{field}.type", f"unknown type {kind!r} (known: {', '.join(TYPES)})")
    stage = _string(raw, "stage", source, field)
    if stage not in STAGES:
        raise ConfigError(source, f"{field}.stage", f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    mandatory = raw.get("mandatory")
    if not isinstance(mandatory, bool):
        raise ConfigError(source, f"{field}.mandatory", f"expected true or false, got {_kind(mandatory)}")
    default = _string(raw, "default", source, field)
    if "\n" in default or "|" in default:
        raise ConfigError(source, f"{field}.default", "must be one line without '|'")
    options = _options(raw, kind, default, source, field)
    return Param(
        name=name,
        roles=_roles(raw, source, field),
        type=kind,
        default=default,
        options=options,
        stage=stage,
        mandatory=mandatory,
        description=_one_line(raw, "description", source, field),
    )


def _options(raw: dict[str, Any], kind: str, default: str, source: str, field: str) -> tuple[str, ...]:
    options = raw.get("options")
    where = f"{field}.options"
    if kind == "list":
        if not isinstance(options, list) or not options or not all(isinstance(item, str) for item in options):
            problem = f"a list parameter needs a list of strings, got {_kind(options)}"
            raise ConfigError(source, where, problem)
        for item in options:
            if not item or "," in item or "|" in item:
                raise ConfigError(source, where, f"option {item!r} must be non-empty without ',' or '|'")
        if len(set(options)) != len(options):
            raise ConfigError(source, where, "lists an option twice")
        if default and default not in options:
            raise ConfigError(source, f"{field}.default", f"{default!r} is not one of the options")
        return tuple(options)
    if kind == "range":
        match = _RANGE.match(options) if isinstance(options, str) else None
        if match is None:
            raise ConfigError(source, where, f"a range parameter needs 'min..max', got {options!r}")
        low, high = int(match.group(1)), int(match.group(2))
        if low > high:
            raise ConfigError(source, where, f"empty range {options!r}")
        if default and (not _INTEGER.match(default) or not low <= int(default) <= high):
            raise ConfigError(source, f"{field}.default", f"{default!r} is not an integer in {options}")
        return (options,)
    if options is not None:
        raise ConfigError(source, where, f"only list and range parameters take options (this one is {kind})")
    if kind == "boolean" and default not in ("YES", "NO", ""):
        raise ConfigError(source, f"{field}.default", f"a boolean default is YES or NO, got {default!r}")
    if kind == "number" and default and not _INTEGER.match(default):
        raise ConfigError(source, f"{field}.default", f"a number default must be an integer, got {default!r}")
    return ()


# ---------------------------------------------------------------------------------------------- outputs


def _decl(decl: ParamsDecl | None) -> ParamsDecl:
    return load_params() if decl is None else decl


def _bash_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _bash_array(name: str, items: list[tuple[str, str]]) -> str:
    body = " ".join(f"[{key}]={_bash_quote(value)}" for key, value in items)
    return f"declare -A {name}=({body})"


def guest_defaults(role: str, decl: ParamsDecl | None = None) -> str:
    """Text of ``params-<role>.sh``: bash 4 associative arrays describing each parameter of the role."""
    decl = _decl(decl)
    params = decl.for_role(role)
    lines = [
        f"# Flower {role} appliance parameters. Generated from {decl.source} by factory/model/params.py:",
        "# do not edit. Installed as /etc/one-appliance/flower/params.sh.",
        f"FL_PARAMS={_bash_quote(' '.join(param.name for param in params))}",
        _bash_array("FL_PARAM_TYPE", [(param.name, param.type) for param in params]),
        _bash_array("FL_PARAM_DEFAULT", [(param.name, param.default) for param in params]),
        _bash_array("FL_PARAM_OPTIONS", [(p.name, p.options_text) for p in params if p.options]),
        _bash_array("FL_PARAM_MANDATORY", [(p.name, "YES" if p.mandatory else "NO") for p in params]),
        _bash_array("FL_PARAM_STAGE", [(param.name, param.stage) for param in params]),
        f"FL_PUBLISHED={_bash_quote(' '.join(item.name for item in decl.published_for(role)))}",
    ]
    return "\n".join(lines) + "\n"


def user_inputs(role: str, decl: ParamsDecl | None = None) -> dict[str, str]:
    """OpenNebula ``USER_INPUTS`` of the role's VM template, upper-case names in declaration order.

    Marketplace YAML writes the same entries with lower-case keys under ``opennebula_template.user_inputs``.
    """
    return {param.name: param.user_input() for param in _decl(decl).for_role(role)}


def inputs_order(role: str, decl: ParamsDecl | None = None) -> str:
    """``INPUTS_ORDER``: the role's parameter names, comma-separated, in declaration order."""
    return ",".join(param.name for param in _decl(decl).for_role(role))


def context_entries(role: str, decl: ParamsDecl | None = None) -> dict[str, str]:
    """CONTEXT entries that pass each user input into the VM: ``{"ONEAPP_X": "$ONEAPP_X"}``."""
    return {param.name: f"${param.name}" for param in _decl(decl).for_role(role)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|") if text else ""


def readme_table(role: str, decl: ParamsDecl | None = None) -> str:
    """Markdown table of the role's parameters (name, type, default, stage, M/O, description)."""
    rows = [
        "| Parameter | Type | Default | Stage | Mandatory | Description |",
        "|---|---|---|---|---|---|",
    ]
    for param in _decl(decl).for_role(role):
        kind = f"{param.type} ({param.options_text})" if param.options else param.type
        default = f"`{param.default}`" if param.default else ""
        mandatory = "yes" if param.mandatory else "no"
        rows.append(
            f"| `{param.name}` | {_cell(kind)} | {default} | {param.stage} | {mandatory} | "
            f"{_cell(param.description)} |"
        )
    return "\n".join(rows) + "\n"


def published_table(role: str, decl: ParamsDecl | None = None) -> str:
    """Markdown table of the attributes the role publishes through OneGate."""
    rows = ["| Attribute | Description |", "|---|---|"]
    rows += [f"| `{item.name}` | {_cell(item.description)} |" for item in _decl(decl).published_for(role)]
    return "\n".join(rows) + "\n"


def readme_section(decl: ParamsDecl | None = None) -> str:
    """What goes between the README markers: per role, the parameter table and the published attributes."""
    decl = _decl(decl)
    parts: list[str] = []
    for role in ROLES:
        title = "SuperLink" if role == "superlink" else "SuperNode"
        parts.append(f"### {title} (`{role}`)\n\n{readme_table(role, decl)}")
        parts.append(f"Published through OneGate by the {title}:\n\n{published_table(role, decl)}")
    return "\n".join(parts)


def update_readme(text: str, decl: ParamsDecl | None = None, source: str = "README.md") -> str:
    """Return ``text`` with the generated section placed between the params markers."""
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < 0 or end < begin:
        raise ConfigError(source, "", f"needs the markers {README_BEGIN} and {README_END}, in that order")
    head = text[: begin + len(README_BEGIN)]
    return f"{head}\n{readme_section(decl)}{text[end:]}"


def generated_files(decl: ParamsDecl | None = None) -> dict[str, str]:
    """Every generated file, relative name -> content (what ``python build.py params`` writes)."""
    import json

    decl = _decl(decl)
    files: dict[str, str] = {}
    for role in ROLES:
        files[f"params-{role}.sh"] = guest_defaults(role, decl)
        opennebula = {
            "user_inputs": user_inputs(role, decl),
            "inputs_order": inputs_order(role, decl),
            "context": context_entries(role, decl),
        }
        files[f"opennebula-{role}.json"] = json.dumps(opennebula, indent=2) + "\n"
    files["params.md"] = readme_section(decl)
    return files
