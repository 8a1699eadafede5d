"""The OneFlow template rules the test cloud enforces are the JSON schema in tests/testcloud/data,
with OneFlow's own messages and defaults."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from hostkit.paths import REPO_ROOT
from testcloud.flow import schema as flow_schema

# Written by this project (a JSON-Schema rendering of OneFlow's Ruby SCHEMA), so kept in the repository.
DATA = REPO_ROOT / "tests" / "testcloud" / "data"
SCHEMA_FILE = DATA / "oneflow_service_template.schema.json"


def test_embedded_schema_is_the_shared_one() -> None:
    shared = json.loads(SCHEMA_FILE.read_text())
    shared.pop("$comment")
    shared.pop("$schema")
    assert shared == flow_schema.SCHEMA


def test_shared_example_is_valid_and_gets_defaults() -> None:
    example = json.loads((DATA / "oneflow_flower_example.json").read_text())
    validated = flow_schema.validate(example)
    assert validated["description"] == ""
    assert validated["roles"][1]["min_vms"] == 2


def test_integers_are_coerced_like_ruby_integer() -> None:
    template = {"name": "x", "roles": [{"name": "r", "type": "vm", "template_id": "4", "cardinality": "2"}]}
    validated = flow_schema.validate(template)
    assert (validated["roles"][0]["template_id"], validated["roles"][0]["cardinality"]) == (4, 2)


def test_false_is_not_a_value_for_ruby() -> None:
    """OneFlow's validator skips false values; a required one is then 'missing'."""
    with pytest.raises(flow_schema.ParseException, match="Mandatory document key 'name"):
        flow_schema.validate({"name": False, "roles": []})
    assert (
        flow_schema.validate({"name": "n", "ready_status_gate": False, "roles": []})["ready_status_gate"]
        is False
    )


def _elastic_role(**policies: Any) -> dict[str, Any]:
    """A role that may scale between 1 and 2 VMs, with the given policies."""
    role = {"name": "r", "type": "vm", "template_id": 0, "cardinality": 1, "min_vms": 1, "max_vms": 2}
    return role | policies


@pytest.mark.parametrize(
    ("expression", "valid"),
    [
        ("CPU > 80", True),
        ("ATT > 3 && ATT2 < 5", True),
        ("(CPU > 1) || MEMORY <= 2", True),
        ("CPU >", False),
        ("> 3", False),
        ("CPU ~ 3", False),
        ("", False),
    ],
)
def test_elasticity_expressions(expression: str, valid: bool) -> None:
    role = _elastic_role(elasticity_policies=[{"type": "CHANGE", "adjust": 1, "expression": expression}])
    if valid:
        flow_schema.validate({"name": "x", "roles": [role]})
    else:
        with pytest.raises(flow_schema.ParseException, match="elasticity policy #0 'expression'"):
            flow_schema.validate({"name": "x", "roles": [role]})


def test_scheduled_policies_need_one_of_start_time_or_recurrence() -> None:
    role = _elastic_role(scheduled_policies=[{"type": "CARDINALITY", "adjust": 2}])
    with pytest.raises(
        flow_schema.ParseException, match="needs to define either 'start_time' or 'recurrence'"
    ):
        flow_schema.validate({"name": "x", "roles": [role]})
    role["scheduled_policies"][0].update(start_time="0", recurrence="* * * * *")
    with pytest.raises(flow_schema.ParseException, match="but not both"):
        flow_schema.validate({"name": "x", "roles": [role]})


def test_unsupported_role_type() -> None:
    with pytest.raises(flow_schema.ParseException, match='Unsupported role type "lb"'):
        flow_schema.validate({"name": "x", "roles": [{"name": "r", "type": "lb", "template_id": 0}]})


def test_6x_contents_upgrade() -> None:
    text = 'NIC = [ NETWORK_ID = "0", IP = "1.2.3.4" ]\nNIC = [ NETWORK_ID = "1" ]\nMEMORY = "512"'
    assert flow_schema.upgrade_template_contents(text) == {
        "NIC": [{"NETWORK_ID": "0", "IP": "1.2.3.4"}, {"NETWORK_ID": "1"}],
        "MEMORY": "512",
    }


def _roles(*roles: tuple[str, list[str]]) -> dict[str, Any]:
    return {
        "name": "x",
        "roles": [
            {"name": name, "type": "vm", "template_id": 0, "parents": parents} for name, parents in roles
        ],
    }


@pytest.mark.parametrize(
    "roles",
    [(("a", ["a"]),), (("a", []), ("b", ["c"])), (("a", ["b"]), ("b", ["a"]))],
    ids=["self", "missing", "cycle"],
)
def test_parents_are_not_checked_as_oneflow_does_not(roles: Any) -> None:
    """OneFlow's ServiceTemplate.validate (opennebula/flow/service_template.rb) never reads ``parents``: a
    self, missing or cyclic parent is valid (issue 9 item 8; the factory checks its own templates)."""
    assert [r["parents"] for r in flow_schema.validate(_roles(*roles))["roles"]] == [p for _, p in roles]


def test_a_fraction_is_truncated_as_ruby_integer_does() -> None:
    """Validator.validate_integer (opennebula/flow/validator.rb) calls Integer(): 1.5 -> 1, -0.25 -> 0."""
    template = {"name": "x", "roles": [{"name": "r", "type": "vm", "template_id": 0, "cardinality": 1.5}]}
    assert flow_schema.validate(template)["roles"][0]["cardinality"] == 1
    template["roles"][0]["cardinality"] = 2.0
    assert flow_schema.validate(template)["roles"][0]["cardinality"] == 2
    template["roles"][0]["min_vms"] = -0.25
    assert flow_schema.validate(template)["roles"][0]["min_vms"] == 0


@pytest.mark.parametrize(("value", "reason"), [(float("inf"), "Infinity"), (float("-inf"), "-Infinity")])
def test_a_non_finite_number_is_ruby_float_domain_error(value: float, reason: str) -> None:
    """Integer(Infinity) raises FloatDomainError, which validate_integer does not rescue (no ParseException):
    oneflow-server.rb answers it with Sinatra's 500."""
    template = {"name": "x", "roles": [{"name": "r", "type": "vm", "template_id": 0, "cardinality": value}]}
    with pytest.raises(flow_schema.FloatDomainError, match=f"^{re.escape(reason)}$"):
        flow_schema.validate(template)
