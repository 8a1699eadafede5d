"""OneFlow 7.x service template validation, with the semantics and messages of OneFlow's Ruby validator
(``opennebula/flow/validator.rb`` and ``ServiceTemplate.validate``): defaults filled in, integers coerced,
extra keys allowed, then the cross-field rules, and the automatic conversion of 6.x templates.

``SCHEMA`` is the same JSON-Schema rendering as ``shared/schemas/oneflow_service_template.schema.json``
(a test keeps the two equal).
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

from hostkit import elasticity

_POLICY_COMMON: dict[str, Any] = {
    "type": "object",
    "required": ["type", "adjust"],
    "properties": {
        "type": {"type": "string", "enum": ["CHANGE", "CARDINALITY", "PERCENTAGE_CHANGE"]},
        "adjust": {"type": "integer"},
        "min_adjust_step": {"type": "integer", "minimum": 1},
    },
}
_SHUTDOWN_ACTIONS = ["terminate", "terminate-hard", "shutdown", "shutdown-hard"]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "roles"],
    "properties": {
        "name": {"type": "string"},
        "deployment": {"type": "string", "enum": ["none", "straight"], "default": "none"},
        "description": {"type": "string", "default": ""},
        "shutdown_action": {"type": "string", "enum": _SHUTDOWN_ACTIONS},
        "roles": {"type": "array", "items": {"$ref": "#/definitions/role"}},
        "user_inputs": {"type": "object"},
        "user_inputs_values": {"type": "object"},
        "ready_status_gate": {"type": "boolean"},
        "automatic_deletion": {"type": "boolean"},
        "networks": {"type": "object"},
        "networks_values": {"type": "array", "items": {"type": "object"}},
        "on_hold": {"type": "boolean"},
    },
    "definitions": {
        "policy_common": _POLICY_COMMON,
        "role": {
            "type": "object",
            "required": ["name", "type", "template_id"],
            "properties": {
                "name": {"type": "string", "pattern": "^\\w+$"},
                "type": {"type": "string", "enum": ["vm", "vr"]},
                "cardinality": {"type": "integer", "minimum": 0, "default": 0},
                "template_id": {"type": "integer"},
                "template_contents": {"type": "object"},
                "user_inputs": {"type": "object"},
                "user_inputs_values": {"type": "object"},
                "parents": {"type": "array", "items": {"type": "string"}},
                "shutdown_action": {"type": "string", "enum": _SHUTDOWN_ACTIONS},
                "min_vms": {"type": "integer", "minimum": 0},
                "max_vms": {"type": "integer", "minimum": 0},
                "cooldown": {"type": "integer", "minimum": 0},
                "on_hold": {"type": "boolean"},
                "elasticity_policies": {
                    "type": "array",
                    "items": {
                        "allOf": [
                            {"$ref": "#/definitions/policy_common"},
                            {
                                "required": ["expression"],
                                "properties": {
                                    "period_number": {"type": "integer", "minimum": 0},
                                    "period": {"type": "integer", "minimum": 0},
                                    "expression": {"type": "string"},
                                    "cooldown": {"type": "integer", "minimum": 0},
                                },
                            },
                        ]
                    },
                },
                "scheduled_policies": {
                    "type": "array",
                    "items": {
                        "allOf": [
                            {"$ref": "#/definitions/policy_common"},
                            {
                                "properties": {
                                    "start_time": {"type": "string"},
                                    "recurrence": {"type": "string"},
                                }
                            },
                        ]
                    },
                },
            },
        },
    },
}


class ParseException(ValueError):
    """``Validator::ParseException``: the message is what OneFlow answers (HTTP 400)."""


def _ruby_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        target: Any = SCHEMA
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return _resolve(target)
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "required": [], "properties": {}}
        for part in schema["allOf"]:
            part = _resolve(part)
            merged["required"] += part.get("required", [])
            merged["properties"].update(part.get("properties", {}))
        return merged
    return schema


def _validate(body: Any, schema: dict[str, Any], key: str, skip_items: bool = False) -> Any:
    schema = _resolve(schema)
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(body, dict):
            raise ParseException(f"KEY: '{key}' must be an Object;")
        properties = schema.get("properties") or {}
        for name, sub in properties.items():
            value = body.get(name)
            if value is not None and value is not False:
                body[name] = _validate(value, sub, name, skip_items=skip_items and name == "roles")
            else:
                sub = _resolve(sub)
                if name in schema.get("required", []):
                    missing = f"Mandatory document key '{name} ({sub.get('type')})' is missing from "
                    raise ParseException(missing + _ruby_json(body))
                if sub.get("default") is not None and sub.get("default") is not False:
                    body[name] = copy.deepcopy(sub["default"])
        return body
    if kind == "array":
        if not isinstance(body, list):
            raise ParseException(f"KEY: '{key}' must be an Array;")
        if skip_items or not schema.get("items"):
            return body
        return [_validate(item, schema["items"], key) for item in body]
    if kind == "integer":
        value = _ruby_integer(body, key)
        if "minimum" in schema and value < schema["minimum"]:
            raise ParseException(f"KEY: '{key}' must be greater than or equal to {schema['minimum']};")
        return value
    if kind == "string":
        if not isinstance(body, str):
            raise ParseException(f"KEY: '{key}' must be a String;")
        if "enum" in schema and body not in schema["enum"]:
            raise ParseException(f"KEY: '{key}' must be one of {', '.join(schema['enum'])};")
        if "pattern" in schema and not re.search(schema["pattern"], body, re.ASCII | re.MULTILINE):
            raise ParseException(f"KEY: '{key}' must match regexp /{schema['pattern']}/;")
        return body
    if kind == "boolean":
        if body is not True and body is not False:
            raise ParseException(f"KEY: '{key}' is not allowed in {{:type=>:boolean, :required=>false}};")
        return body
    return body


class FloatDomainError(Exception):
    """Ruby's FloatDomainError (``Integer(Float::INFINITY)``): no ParseException, so no 400 upstream."""


def _ruby_float(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _ruby_integer(value: Any, key: str) -> int:
    """``Integer(value)``: integers, integral strings, floats truncated."""
    if isinstance(value, bool):
        raise ParseException(f"KEY: '{key}' must be an Integer;")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # Ruby's Integer() truncates 1.5 to 1, and raises FloatDomainError on Infinity (JSON's 1e400), which
        # Validator.validate_integer (opennebula/flow/validator.rb) does not rescue: oneflow-server.rb then
        # answers Sinatra's 500.
        if not math.isfinite(value):
            raise FloatDomainError(_ruby_float(value))
        return int(value)
    if isinstance(value, str) and re.fullmatch(
        r"\s*[+-]?(0[xX][0-9a-fA-F_]+|0[bB][01_]+|\d[\d_]*)\s*", value
    ):
        return int(value.replace("_", ""), 0) if value.strip()[:2].lower() in ("0x", "0b") else int(value)
    raise ParseException(f"KEY: '{key}' must be an Integer;")


# ---------------------------------------------------------------------------------------------- templates
def old_format(body: dict[str, Any]) -> bool:
    roles = body.get("roles")
    return isinstance(roles, list) and all(
        isinstance(r, dict) and ("vm_template" in r or "vm_template_contents" in r) for r in roles
    )


def upgrade_template_contents(raw: str | None) -> dict[str, Any]:
    """A 6.x ``vm_template_contents`` (``KEY = VALUE`` text) as a 7.x ``template_contents`` object."""
    if not raw:
        return {}
    result: dict[str, Any] = {}
    for line in re.split(r"\n(?![^\[]*\])", raw):
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        value = value.replace('"', "")
        if value.startswith("[") and value.endswith("]"):
            vector = {}
            for element in re.split(r"\s*,\s*", value[1:-1]):
                sub_key, _, sub_value = element.partition("=")
                vector[sub_key.strip()] = sub_value.strip()
            item: Any = vector
        else:
            item = value
        if key in result:
            result[key] = result[key] + [item] if isinstance(result[key], list) else [result[key], item]
        else:
            result[key] = item
    return {k: ([v] if isinstance(v, dict) else v) for k, v in result.items()}


def convert_template(body: dict[str, Any]) -> None:
    try:
        for role in body["roles"]:
            role["template_id"] = int(role.get("vm_template") or 0)
            role["type"] = "vm"
            if role.get("custom_attrs"):
                role["user_inputs"] = role["custom_attrs"]
            if role.get("vm_template_contents"):
                role["template_contents"] = upgrade_template_contents(role["vm_template_contents"])
            for key in ("vm_template", "vm_template_contents", "custom_attrs", "custom_attrs_values"):
                role.pop(key, None)
        if body.get("custom_attrs"):
            body["user_inputs"] = body.pop("custom_attrs")
        if body.get("custom_attrs_values"):
            body["user_inputs_values"] = body.pop("custom_attrs_values")
    except (TypeError, ValueError, AttributeError) as error:
        raise ParseException(
            "An old service template format (OpenNebula v6.x) was detected and could not be automatically "
            f"converted. Update it manually to the new format. Error: {error}"
        ) from None


def validate(template: Any) -> dict[str, Any]:
    """``ServiceTemplate.validate``: fills defaults in place and returns the template."""
    if isinstance(template, dict) and old_format(template):
        convert_template(template)
    _validate(template, SCHEMA, "", skip_items=True)
    role_schema = SCHEMA["definitions"]["role"]
    for role in template["roles"]:
        if isinstance(role, dict) and role.get("type", "vm") not in ("vm", "vr"):
            raise ParseException(f'Unsupported role type "{role["type"]}"')
        _validate(role, role_schema, "roles")
    _validate_values(template)
    return template


def _validate_values(template: dict[str, Any]) -> None:
    roles = template["roles"]
    for index, role in enumerate(roles):
        for other in roles[index + 1 :]:
            if role["name"] == other["name"]:
                raise ParseException(f"Role name '{role['name']}' is repeated")
        if role.get("type", "vm") != "vm":
            continue
        # validate_vmvalues (service_template.rb): min/max against the cardinality, policies need both,
        # expressions parse (treetop's reason), scheduled policies' start_time/recurrence
        try:
            elasticity.validate_role(role)
        except elasticity.PolicyError as error:
            raise ParseException(str(error)) from None
