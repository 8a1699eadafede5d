"""The OneFlow template rules the test cloud enforces are the JSON schema of shared/schemas, with OneFlow's
own messages and defaults."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from factory.paths import SHARED_DIR
from testcloud import flow_schema

SCHEMA_FILE = SHARED_DIR / "schemas" / "oneflow_service_template.schema.json"


def test_embedded_schema_is_the_shared_one() -> None:
    shared = json.loads(SCHEMA_FILE.read_text())
    shared.pop("$comment")
    shared.pop("$schema")
    assert shared == flow_schema.SCHEMA


def test_shared_example_is_valid_and_gets_defaults() -> None:
    example = json.loads((SHARED_DIR / "samples" / "oneflow_flower_example.json").read_text())
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
    role = {
        "name": "r",
        "type": "vm",
        "template_id": 0,
        "cardinality": 1,
        "min_vms": 1,
        "max_vms": 2,
        "elasticity_policies": [{"type": "CHANGE", "adjust": 1, "expression": expression}],
    }
    if valid:
        flow_schema.validate({"name": "x", "roles": [role]})
    else:
        with pytest.raises(flow_schema.ParseException, match="elasticity policy #0 'expression'"):
            flow_schema.validate({"name": "x", "roles": [role]})


def test_scheduled_policies_need_one_of_start_time_or_recurrence() -> None:
    role = {
        "name": "r",
        "type": "vm",
        "template_id": 0,
        "cardinality": 1,
        "min_vms": 1,
        "max_vms": 2,
        "scheduled_policies": [{"type": "CARDINALITY", "adjust": 2}],
    }
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
    ("roles", "message"),
    [
        ((("a", ["a"]),), "Role 'a' has itself as a parent"),
        (
            (("a", []), ("b", ["c"])),
            "Role 'b' has parent 'c', which is not a role of this template (roles: a, b)",
        ),
        ((("a", ["b"]), ("b", ["a"])), "Roles form a cycle through 'parents' ('a' -> 'b' -> 'a')"),
        ((("a", []), ("b", ["d"]), ("c", ["b"]), ("d", ["c"])), "('b' -> 'd' -> 'c' -> 'b')"),
    ],
    ids=["self", "missing", "pair", "three"],
)
def test_parents_must_be_other_roles_without_a_cycle(roles: Any, message: str) -> None:
    """Issue 9 item 8: such a template would leave its services in DEPLOYING_NETS for ever."""
    with pytest.raises(flow_schema.ParseException, match=re.escape(message)):
        flow_schema.validate(_roles(*roles))


def test_a_long_acyclic_chain_of_parents_is_valid() -> None:
    chain = [(f"r{i}", [f"r{i - 1}"] if i else []) for i in range(2000)]
    assert len(flow_schema.validate(_roles(*chain))["roles"]) == 2000


@pytest.mark.parametrize("value", [1.5, float("inf"), float("nan"), -0.25])
def test_a_fraction_or_non_finite_number_is_no_integer(value: float) -> None:
    template = {"name": "x", "roles": [{"name": "r", "type": "vm", "template_id": 0, "cardinality": value}]}
    with pytest.raises(flow_schema.ParseException, match="KEY: 'cardinality' must be an Integer;"):
        flow_schema.validate(template)
    template["roles"][0]["cardinality"] = 2.0  # an integral float is that integer, as Ruby's Integer()
    assert flow_schema.validate(template)["roles"][0]["cardinality"] == 2


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        ("M|number|n||1", "notanumber", "User input 'X' (number): 'notanumber' is not an Integer"),
        ("M|number|n||1", "1.5", "is not an Integer"),
        ("M|number-float|n||1", "1e400", "'1e400' is not a Float"),
        ("M|range|n|1..8|2", "9", "'9' is not in the range [1..8]"),
        ("M|range|n|1..8|2", "x", "is not an Integer"),
        ("M|boolean|b||YES", "yes", "is not a boolean: YES or NO"),
        ("M|list|l|fedavg,fedprox|fedavg", "krum", "is not one of fedavg,fedprox"),
        ("M|number|n||1", "", "'' is not an Integer"),
    ],
)
def test_user_input_values_match_their_type(spec: str, value: str, message: str) -> None:
    with pytest.raises(flow_schema.ParseException, match=re.escape(message)):
        flow_schema.check_user_input_value("X", spec, value)


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        ("M|number|n||1", "-3"),
        ("M|number|n||1", 7),
        ("M|number-float|n||1", "0.5"),
        ("M|range|n|1..8|2", "8"),
        ("M|boolean|b||YES", "NO"),
        ("M|list|l|fedavg,fedprox|fedavg", "fedprox"),
        ("O|number|n||", ""),
        ("M|text|t||", "anything"),
    ],
)
def test_user_input_values_of_the_right_type_pass(spec: str, value: Any) -> None:
    flow_schema.check_user_input_value("X", spec, value)
