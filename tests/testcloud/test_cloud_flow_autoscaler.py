"""OneFlow's autoscaler in the test cloud (ServiceAutoScaler.rb, LifeCycleManager.rb, docs/elasticity.md): an
elasticity policy over an attribute a guest publishes through OneGate scales the role up, the cooldown holds
it, a scale-down policy shrinks it again, a scheduled policy fires at its time; the state history shows
SCALING, COOLDOWN, RUNNING. Bad policies are refused at create and instantiate with upstream's message, and
nothing of the service is left behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
import requests
from cloudtest_helpers import FAST, flow, gate_headers, role_nodes, service_body, wait_for

from testcloud import launcher
from testcloud.core.config import Timings

RUNNING, SCALING, COOLDOWN = 2, 8, 10
AUTOSCALER = 0.2
COOLDOWN_S = 3


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[launcher.CloudHandle]:
    fast = Timings(**{**FAST.__dict__, "autoscaler": AUTOSCALER})
    handle = launcher.start(tmp_path / "cloud", driver="dummy", timings=fast, flow_cooldown=1)
    yield handle
    handle.stop()


@pytest.fixture
def one(cloud: launcher.CloudHandle) -> Any:
    return pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)


def vm_template(one: Any, name: str = "node") -> int:
    return int(
        one.template.allocate(f'NAME="{name}"\nCPU="1"\nMEMORY="64"\nCONTEXT=[NETWORK="YES", TOKEN="YES"]')
    )


def service_template(template_id: int, **role: Any) -> dict[str, Any]:
    return {
        "name": "elastic",
        "roles": [{"name": "supernode", "type": "vm", "template_id": template_id, "cardinality": 1, **role}],
    }


def create(cloud: Any, template: dict[str, Any]) -> int:
    reply = flow(cloud, "POST", "/service_template", template)
    assert reply.status_code == 201, reply.text
    return int(reply.json()["DOCUMENT"]["ID"])


def instantiate(cloud: Any, template_id: int, merge: dict[str, Any] | None = None) -> requests.Response:
    action = {"action": {"perform": "instantiate", "params": {"merge_template": merge or {}}}}
    return flow(cloud, "POST", f"/service_template/{template_id}/action", action)


def publish(cloud: Any, vm_id: int, text: str) -> None:
    """What a guest does with ``onegate vm update --data``."""
    reply = requests.put(
        cloud.endpoints["onegate"] + "/vm",
        data={"data": text},
        headers=gate_headers(cloud, vm_id),
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def states(cloud: Any, service_id: int) -> list[str]:
    return [
        entry["message"].removeprefix("New state: ")
        for entry in service_body(cloud, service_id).get("log", [])
        if entry["message"].startswith("New state: ")
    ]


def role(cloud: Any, service_id: int) -> dict[str, Any]:
    return next(r for r in service_body(cloud, service_id)["roles"] if r["name"] == "supernode")


def test_policy_over_a_onegate_attribute_scales_up_holds_in_cooldown_and_scales_down(
    cloud: Any, one: Any
) -> None:
    policies = [
        {"type": "CHANGE", "adjust": 1, "expression": "LOAD > 5", "period_number": 1, "period": 0},
        {"type": "CHANGE", "adjust": -1, "expression": "LOAD < 1", "period_number": 2, "period": 0},
    ]
    template = service_template(
        vm_template(one), min_vms=1, max_vms=3, cooldown=COOLDOWN_S, elasticity_policies=policies
    )
    reply = instantiate(cloud, create(cloud, template))
    assert reply.status_code == 201, reply.text
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    wait_for(lambda: service_body(cloud, service_id)["state"] == RUNNING)
    [first] = role_nodes(cloud, service_id, "supernode")
    time.sleep(AUTOSCALER * 4)  # LOAD is not published: the comparisons are false, nothing scales
    assert role_nodes(cloud, service_id, "supernode") == [first]
    assert role(cloud, service_id)["elasticity_policies"][0]["expression_evaluated"] == "LOAD[--] > 5"

    publish(cloud, first, "LOAD=10")
    wait_for(lambda: service_body(cloud, service_id)["state"] == COOLDOWN)
    entered = time.monotonic()
    nodes = role_nodes(cloud, service_id, "supernode")
    assert len(nodes) == 2 and nodes[0] == first
    current = role(cloud, service_id)
    assert current["cardinality"] == 2 and current["cooldown"] == COOLDOWN_S
    assert current["elasticity_policies"][0]["expression_evaluated"] == "LOAD[10.0] > 5"
    # the mean is still 10 (the new VM has not published LOAD): only the cooldown holds the role at 2
    time.sleep(COOLDOWN_S / 2)
    assert service_body(cloud, service_id)["state"] == COOLDOWN
    assert len(role_nodes(cloud, service_id, "supernode")) == 2
    for vm_id in nodes:
        publish(cloud, vm_id, "LOAD=0")
    wait_for(lambda: service_body(cloud, service_id)["state"] == RUNNING, timeout=COOLDOWN_S + 5)
    assert time.monotonic() - entered >= COOLDOWN_S - 0.5

    # LOAD < 1 must hold twice in a row (period_number 2); then the oldest node goes (OneFlow's order)
    wait_for(lambda: role_nodes(cloud, service_id, "supernode") == [nodes[1]], timeout=COOLDOWN_S + 10)
    wait_for(lambda: service_body(cloud, service_id)["state"] == RUNNING, timeout=COOLDOWN_S + 10)
    assert one.vm.info(first).STATE == 6  # DONE
    assert states(cloud, service_id)[-7:] == [
        "RUNNING",
        "SCALING",
        "COOLDOWN",
        "RUNNING",
        "SCALING",
        "COOLDOWN",
        "RUNNING",
    ]
    messages = [entry["message"] for entry in service_body(cloud, service_id)["log"]]
    assert "Role supernode scaling up from 1 to 2 nodes" in messages
    assert "Role supernode scaling down from 2 to 1 nodes" in messages
    # at min_vms the scale-down policy asks for no change: the role stays at one node
    time.sleep(AUTOSCALER * 4)
    assert role_nodes(cloud, service_id, "supernode") == [nodes[1]]
    assert service_body(cloud, service_id)["state"] == RUNNING


def test_scheduled_policy_fires_at_its_start_time(cloud: Any, one: Any) -> None:
    at = int(time.time()) + 2
    scheduled = [{"type": "CARDINALITY", "adjust": 3, "start_time": str(at), "cooldown": 1}]
    template = service_template(vm_template(one), min_vms=1, max_vms=3, scheduled_policies=scheduled)
    reply = instantiate(cloud, create(cloud, template))
    assert reply.status_code == 201, reply.text
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    wait_for(lambda: service_body(cloud, service_id)["state"] == RUNNING)
    assert len(role_nodes(cloud, service_id, "supernode")) == 1
    wait_for(lambda: len(role_nodes(cloud, service_id, "supernode")) == 3, timeout=10)
    assert time.time() >= at
    wait_for(lambda: service_body(cloud, service_id)["state"] == RUNNING, timeout=10)
    assert states(cloud, service_id)[-3:] == ["SCALING", "COOLDOWN", "RUNNING"]
    assert role(cloud, service_id)["cooldown"] == 1


def test_implicit_rule_restores_min_vms_after_a_node_is_deleted(cloud: Any, one: Any) -> None:
    template = service_template(vm_template(one), cardinality=2, min_vms=2, max_vms=4)
    reply = instantiate(cloud, create(cloud, template))
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    wait_for(lambda: service_body(cloud, service_id)["state"] == RUNNING)
    first, second = role_nodes(cloud, service_id, "supernode")
    one.vm.action("terminate-hard", first)
    wait_for(lambda: first not in role_nodes(cloud, service_id, "supernode"))
    wait_for(lambda: len(role_nodes(cloud, service_id, "supernode")) == 2, timeout=10)
    wait_for(lambda: service_body(cloud, service_id)["state"] == RUNNING, timeout=10)
    assert role_nodes(cloud, service_id, "supernode")[0] == second
    assert role(cloud, service_id)["cooldown"] == 0  # the implicit rule's cooldown, stored as upstream does


BAD_ROLES = [
    (
        {"elasticity_policies": [{"type": "CHANGE", "adjust": 1, "expression": "CPU >"}]},
        "Role 'supernode', elasticity policy #0 'expression' parse error: Expected one of ' ', '-', [0-9], "
        "'\"', '\\'', [a-zA-Z] at line 1, column 6 (byte 6) after CPU >",
    ),
    (
        {"min_vms": 4, "max_vms": 2},
        "Role 'supernode' 'cardinality' must be greater than or equal to 'min_vms'",
    ),
    (
        {"scheduled_policies": [{"type": "CHANGE", "adjust": 1, "recurrence": "61 * * * *"}]},
        "Role 'supernode', scheduled policy #0 'recurrence' is not a valid cron expression",
    ),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROLES)
def test_bad_policies_are_refused_at_create_with_upstreams_message(
    cloud: Any, one: Any, bad: dict[str, Any], message: str
) -> None:
    role_fields = {"min_vms": 1, "max_vms": 3, **bad}
    reply = flow(cloud, "POST", "/service_template", service_template(vm_template(one), **role_fields))
    assert (reply.status_code, reply.text) == (400, message)
    assert flow(cloud, "GET", "/service_template").json() == {"DOCUMENT_POOL": {}}


@pytest.mark.parametrize(("bad", "message"), BAD_ROLES)
def test_bad_policies_in_merge_template_deploy_nothing(
    cloud: Any, one: Any, bad: dict[str, Any], message: str
) -> None:
    template_id = create(cloud, service_template(vm_template(one), min_vms=1, max_vms=3))
    reply = instantiate(cloud, template_id, {"roles": [{"name": "supernode", **bad}]})
    assert (reply.status_code, reply.text) == (500, message)  # engine.instantiate: a validation error is 500
    assert flow(cloud, "GET", "/service").json() == {"DOCUMENT_POOL": {}}
    assert one.vmpool.info(-2, -1, -1, -1).VM == []


# ---------------------------------------------------------------------------------------------- the service
def test_the_published_supernode_role_carries_the_documented_default_policy() -> None:
    """docs/elasticity.md's JSON block is what the published service's SuperNode role holds."""
    import json
    import re

    from factory.harness import appliance_templates
    from hostkit import elasticity
    from hostkit.paths import REPO_ROOT

    text = (REPO_ROOT / "docs" / "elasticity.md").read_text()
    section = text[text.index("## The default policy of the Flower service") :]
    match = re.search(r"```json\n(.*?)\n```", section, re.S)
    assert match is not None, "docs/elasticity.md lost its default policy block"
    documented = json.loads(match.group(1))
    body = appliance_templates.service_template("published", None, None, 2, security=None)
    supernode = next(role for role in body["roles"] if role["name"] == "supernode")
    assert {key: supernode[key] for key in documented if key != "name"} == {
        key: value for key, value in documented.items() if key != "name"
    }
    elasticity.validate_template(body)  # the validator the test cloud's OneFlow runs
    for size in (1, 2, 12):  # test federations of other sizes stay valid
        elasticity.validate_template(appliance_templates.service_template("t", 1, 2, size, "tls"))


def test_the_monitoring_role_deploys_nothing_until_asked_then_boots_the_users_template(
    cloud: Any, one: Any
) -> None:
    """The published service: ``monitoring`` has cardinality 0 (no VM, the service RUNNING without it);
    a user enables it with their own VM template through ``merge_template``."""
    from factory.harness import appliance_templates

    link, node, prometheus = (vm_template(one, name) for name in ("link", "node", "prometheus"))
    body = appliance_templates.service_template("published", link, node, 1, "insecure")
    body["ready_status_gate"] = False  # the dummy driver's guests report nothing
    template_id = create(cloud, body)
    network = [{appliance_templates.NETWORK: {"id": "0"}}]
    reply = instantiate(cloud, template_id, {"networks_values": network})
    assert reply.status_code == 201, reply.text
    plain = int(reply.json()["DOCUMENT"]["ID"])
    merge = {
        "networks_values": network,
        "roles": [{"name": "monitoring", "cardinality": 1, "template_id": prometheus}],
    }
    reply = instantiate(cloud, template_id, merge)
    assert reply.status_code == 201, reply.text
    watched = int(reply.json()["DOCUMENT"]["ID"])
    for service_id in (plain, watched):
        wait_for(lambda sid=service_id: service_body(cloud, sid)["state"] == RUNNING, timeout=20)
    assert role_nodes(cloud, plain, "monitoring") == []
    [monitor] = role_nodes(cloud, watched, "monitoring")
    assert int(one.vm.info(monitor).TEMPLATE["TEMPLATE_ID"]) == prometheus
    assert role_nodes(cloud, watched, "monitoring") == [monitor]
