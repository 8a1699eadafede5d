"""OneFlow over HTTP as the oneflow CLI calls it: template validation, instantiate with merge_template,
straight and none deployments with the ready gate (READY sent through OneGate as a guest does),
${parent.xpath}, service and role states, scale, undeploy."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from cloudtest_helpers import (
    flow,
    make_qcow2,
    ready_image,
    report_ready,
    role_nodes,
    service_body,
    two_role_service,
    wait_for,
)

from hostkit.paths import REPO_ROOT

SERVICE = {
    "PENDING": 0,
    "DEPLOYING": 1,
    "RUNNING": 2,
    "UNDEPLOYING": 3,
    "WARNING": 4,
    "FAILED_DEPLOYING": 7,
    "SCALING": 8,
    "COOLDOWN": 10,
    "DEPLOYING_NETS": 11,
    "UNDEPLOYING_NETS": 12,
}
ROLE = {"PENDING": 0, "DEPLOYING": 1, "RUNNING": 2, "UNDEPLOYING": 3, "DONE": 5, "FAILED_DEPLOYING": 7}


def minimal(template_id: int, **extra: Any) -> dict[str, Any]:
    return {"name": "svc", "roles": [{"name": "only", "type": "vm", "template_id": template_id, **extra}]}


def test_authentication(cloud: Any) -> None:
    import requests

    reply = requests.get(cloud.endpoints["oneflow"] + "/service", timeout=10)
    assert (reply.status_code, reply.text) == (401, "A username and password must be provided")
    reply = flow(cloud, "GET", "/service", auth=("oneadmin", "wrong"))
    assert (reply.status_code, reply.text) == (401, "Invalid credentials")
    assert flow(cloud, "GET", "/service").json() == {"DOCUMENT_POOL": {}}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ({"roles": []}, "Mandatory document key 'name (string)' is missing from {\"roles\":[]}"),
        ({"name": "x"}, "Mandatory document key 'roles (array)' is missing from"),
        ({"name": "x", "roles": {}}, "KEY: 'roles' must be an Array;"),
        (
            {"name": "x", "deployment": "fast", "roles": []},
            "KEY: 'deployment' must be one of none, straight;",
        ),
        ({"name": "x", "roles": [{"name": "r", "template_id": 0}]}, "Mandatory document key 'type (string)'"),
        (
            {"name": "x", "roles": [{"name": "r", "type": "vm"}]},
            "Mandatory document key 'template_id (integer)'",
        ),
        (
            {"name": "x", "roles": [{"name": "r-1", "type": "vm", "template_id": 0}]},
            "KEY: 'name' must match regexp /^\\w+$/;",
        ),
        (
            {"name": "x", "roles": [{"name": "r", "type": "vm", "template_id": "zero"}]},
            "KEY: 'template_id' must be an Integer;",
        ),
        (
            {"name": "x", "roles": [{"name": "r", "type": "vm", "template_id": 0, "cardinality": -1}]},
            "KEY: 'cardinality' must be greater than or equal to 0;",
        ),
        (
            {
                "name": "x",
                "roles": [{"name": "r", "type": "vm", "template_id": 0, "cardinality": 1, "min_vms": 2}],
            },
            "Role 'r' 'cardinality' must be greater than or equal to 'min_vms'",
        ),
        (
            {
                "name": "x",
                "roles": [
                    {"name": "r", "type": "vm", "template_id": 0},
                    {"name": "r", "type": "vm", "template_id": 0},
                ],
            },
            "Role name 'r' is repeated",
        ),
        (
            {
                "name": "x",
                "roles": [
                    {
                        "name": "r",
                        "type": "vm",
                        "template_id": 0,
                        "cardinality": 1,
                        "elasticity_policies": [{"type": "CHANGE", "adjust": 1, "expression": "CPU >"}],
                    }
                ],
            },
            "must define both 'min_vms' and 'max_vms'",
        ),
        (
            {"name": "x", "ready_status_gate": "yes", "roles": []},
            "KEY: 'ready_status_gate' is not allowed in",
        ),
    ],
)
def test_template_validation(cloud: Any, template: dict[str, Any], message: str) -> None:
    reply = flow(cloud, "POST", "/service_template", template)
    assert reply.status_code == 400
    assert message in reply.text
    assert flow(cloud, "GET", "/service_template").json() == {"DOCUMENT_POOL": {}}


def test_malformed_json(cloud: Any) -> None:
    import requests

    user, password = cloud.auth.split(":", 1)
    reply = requests.post(
        cloud.endpoints["oneflow"] + "/service_template", data="{not json", auth=(user, password), timeout=10
    )
    assert reply.status_code == 400 and "unexpected token" in reply.text


def test_template_crud_and_defaults(cloud: Any, one: Any) -> None:
    vm_template = one.template.allocate('NAME="t"\nCPU="1"\nMEMORY="64"')
    reply = flow(cloud, "POST", "/service_template", minimal(vm_template))
    assert reply.status_code == 201
    document = reply.json()["DOCUMENT"]
    assert (document["TYPE"], document["NAME"], document["UNAME"]) == ("101", "svc", "oneadmin")
    body = document["TEMPLATE"]["BODY"]
    assert (body["deployment"], body["description"], body["roles"][0]["cardinality"]) == ("none", "", 0)
    assert isinstance(body["registration_time"], int)
    template_id = int(document["ID"])
    assert (
        flow(cloud, "GET", f"/service_template/{template_id}").json()["DOCUMENT"]["TEMPLATE"]["BODY"] == body
    )
    listed = flow(cloud, "GET", "/service_template").json()["DOCUMENT_POOL"]["DOCUMENT"]
    assert [d["ID"] for d in listed] == [str(template_id)]
    updated = dict(body, description="new")
    reply = flow(cloud, "PUT", f"/service_template/{template_id}", updated)
    assert reply.status_code == 200 and reply.json()["DOCUMENT"]["TEMPLATE"]["BODY"]["description"] == "new"
    reply = flow(cloud, "PUT", f"/service_template/{template_id}", dict(body, registration_time=1))
    assert reply.status_code == 500 and "registration_time" in reply.text
    assert one.document.info(template_id).TYPE == "101"  # the same document through XML-RPC
    assert flow(cloud, "DELETE", f"/service_template/{template_id}").status_code == 204
    reply = flow(cloud, "GET", f"/service_template/{template_id}")
    assert (reply.status_code, reply.text) == (
        404,
        f"[one.document.info] Error getting document [{template_id}].",
    )


def test_6x_templates_are_converted(cloud: Any, one: Any) -> None:
    vm_template = one.template.allocate('NAME="t"\nCPU="1"\nMEMORY="64"')
    old = {
        "name": "old",
        "roles": [
            {
                "name": "r",
                "vm_template": vm_template,
                "cardinality": 1,
                "vm_template_contents": 'NIC = [ NETWORK_ID = "0" ]\nX = "1"',
            }
        ],
    }
    reply = flow(cloud, "POST", "/service_template", old)
    assert reply.status_code == 201, reply.text
    role = reply.json()["DOCUMENT"]["TEMPLATE"]["BODY"]["roles"][0]
    assert (role["template_id"], role["type"]) == (vm_template, "vm")
    assert role["template_contents"] == {"NIC": [{"NETWORK_ID": "0"}], "X": "1"}
    assert "vm_template" not in role


def test_the_shared_example_instantiates_with_inputs_and_networks(cloud: Any, one: Any) -> None:
    example = json.loads((REPO_ROOT / "tests/testcloud/data/oneflow_flower_example.json").read_text())
    server = one.template.allocate('NAME="sl"\nCPU="1"\nMEMORY="64"\nCONTEXT=[NETWORK="YES"]')
    client = one.template.allocate('NAME="sn"\nCPU="1"\nMEMORY="64"')
    example["roles"][0]["template_id"], example["roles"][1]["template_id"] = server, client
    reply = flow(cloud, "POST", "/service_template", example)
    assert reply.status_code == 201, reply.text
    template_id = reply.json()["DOCUMENT"]["ID"]
    merge = {"name": "merged", "user_inputs_values": {"ONEAPP_FLOWER_VERSION": "1.42.0"}}
    action = {"action": {"perform": "instantiate", "params": {"merge_template": merge}}}
    reply = flow(cloud, "POST", f"/service_template/{template_id}/action", action)
    assert reply.status_code == 201, reply.text
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    body = reply.json()["DOCUMENT"]["TEMPLATE"]["BODY"]
    assert (body["name"], body["state"], reply.json()["DOCUMENT"]["TYPE"]) == (
        "merged",
        SERVICE["PENDING"],
        "100",
    )
    assert body["networks_values"] == [{"Private": {"id": "0"}}]  # the default of the networks declaration
    server_vm = wait_for(lambda: role_nodes(cloud, service_id, "superlink"))[0]
    vm = one.vm.info(server_vm)
    assert vm.TEMPLATE["NIC"]["NETWORK_ID"] == "0"  # $Private resolved
    assert vm.TEMPLATE["CONTEXT"]["ONEAPP_FLOWER_VERSION"] == "1.42.0"  # user input through CONTEXT
    assert vm.USER_TEMPLATE["ONEAPP_FLOWER_VERSION"] == "1.42.0"
    assert vm.TEMPLATE["CONTEXT"]["NETWORK"] == "YES"  # the VM template's CONTEXT is merged, not replaced
    missing = {"action": {"perform": "instantiate", "params": {"merge_template": {}}}}
    reply = flow(cloud, "POST", f"/service_template/{template_id}/action", missing)
    assert (reply.status_code, reply.text) == (
        400,
        "The Service template specifies User Inputs but no values have been found",
    )


def test_straight_deployment_with_ready_gate(cloud: Any, one: Any) -> None:
    service_id = two_role_service(cloud, one, ready_gate=True)
    server = wait_for(lambda: role_nodes(cloud, service_id, "superlink"))[0]
    wait_for(lambda: one.vm.info(server).LCM_STATE == 3)
    time.sleep(0.5)  # RUNNING is not enough with the gate: nothing more may happen until READY
    body = service_body(cloud, service_id)
    assert body["state"] == SERVICE["DEPLOYING"]
    assert [r["state"] for r in body["roles"]] == [ROLE["DEPLOYING"], ROLE["PENDING"]]
    assert role_nodes(cloud, service_id, "supernode") == []
    report_ready(cloud, server)
    clients = wait_for(lambda: role_nodes(cloud, service_id, "supernode"))
    assert service_body(cloud, service_id)["roles"][0]["state"] == ROLE["RUNNING"]
    server_ip = one.vm.info(server).TEMPLATE["CONTEXT"]["ETH0_IP"]
    for number, vm_id in enumerate(clients):
        vm = one.vm.info(vm_id)
        assert f"supernode_{number}_(service_{service_id})" == vm.NAME
        assert (
            vm.TEMPLATE["CONTEXT"]["ONEAPP_FL_SUPERLINK"] == server_ip
        )  # ${superlink.template.context.eth0_ip}
        assert (vm.USER_TEMPLATE["SERVICE_ID"], vm.USER_TEMPLATE["ROLE_NAME"]) == (
            str(service_id),
            "supernode",
        )
    assert f"superlink_0_(service_{service_id})" == one.vm.info(server).NAME
    wait_for(lambda: all(one.vm.info(c).LCM_STATE == 3 for c in clients))
    report_ready(cloud, clients[0])
    time.sleep(0.3)
    assert service_body(cloud, service_id)["state"] == SERVICE["DEPLOYING"]  # one of two is not enough
    report_ready(cloud, clients[1])
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"])
    body = service_body(cloud, service_id)
    assert [r["state"] for r in body["roles"]] == [ROLE["RUNNING"], ROLE["RUNNING"]]
    messages = [entry["message"] for entry in body["log"]]
    assert messages == ["New state: DEPLOYING_NETS", "New state: DEPLOYING", "New state: RUNNING"]


def test_none_deployment_deploys_every_role_at_once(cloud: Any, one: Any) -> None:
    """``deployment: none`` (OneFlow's default Strategy, src/flow/lib/strategy.rb ``roles_deploy``: every
    PENDING role, whatever its parents): the SuperNodes are created with the SuperLink, not after its READY.
    ``parents`` still name where ``${superlink...}`` is read (models/role.rb, evaluated when the role deploys:
    the SuperLink's VM exists by then, roles deploy in template order). The service is RUNNING once every role
    is (LifeCycleManager.rb ``deploy_cb``), in whatever order the VMs report READY; undeploying takes every
    role at once (Strategy#roles_shutdown)."""
    service_id = two_role_service(cloud, one, ready_gate=True, deployment="none")
    server = wait_for(lambda: role_nodes(cloud, service_id, "superlink"))[0]
    clients = wait_for(lambda: role_nodes(cloud, service_id, "supernode"))
    assert len(clients) == 2
    body = service_body(cloud, service_id)
    assert body["state"] == SERVICE["DEPLOYING"]
    assert [r["state"] for r in body["roles"]] == [ROLE["DEPLOYING"], ROLE["DEPLOYING"]]
    assert body["roles"][1]["parents"] == ["superlink"]  # kept as given
    server_ip = one.vm.info(server).TEMPLATE["CONTEXT"]["ETH0_IP"]
    assert all(one.vm.info(c).TEMPLATE["CONTEXT"]["ONEAPP_FL_SUPERLINK"] == server_ip for c in clients)
    wait_for(lambda: all(one.vm.info(v).LCM_STATE == 3 for v in [server, *clients]))
    for client in clients:  # the children first: nothing orders them after their parent
        report_ready(cloud, client)
    wait_for(lambda: service_body(cloud, service_id)["roles"][1]["state"] == ROLE["RUNNING"])
    time.sleep(0.3)
    body = service_body(cloud, service_id)
    assert (body["state"], body["roles"][0]["state"]) == (SERVICE["DEPLOYING"], ROLE["DEPLOYING"])
    report_ready(cloud, server)
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"])
    assert flow(cloud, "DELETE", f"/service/{service_id}").status_code == 204
    body = service_body(cloud, service_id)
    assert [r["state"] for r in body["roles"]] == [ROLE["UNDEPLOYING"], ROLE["UNDEPLOYING"]]
    wait_for(lambda: flow(cloud, "GET", f"/service/{service_id}").status_code == 404)
    assert all(one.vm.info(v).STATE == 6 for v in [server, *clients])


def test_without_gate_running_vms_are_enough(cloud: Any, one: Any) -> None:
    service_id = two_role_service(cloud, one, ready_gate=False)
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"])
    assert len(role_nodes(cloud, service_id, "supernode")) == 2


def test_scale_up_and_down(cloud: Any, one: Any) -> None:
    service_id = two_role_service(cloud, one, ready_gate=False)
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"])
    first = role_nodes(cloud, service_id, "supernode")
    reply = flow(cloud, "POST", f"/service/{service_id}/scale", {"role_name": "supernode", "cardinality": 4})
    assert reply.status_code == 204
    reply = flow(cloud, "POST", f"/service/{service_id}/scale", {"role_name": "supernode", "cardinality": 3})
    assert (reply.status_code, reply.text) == (500, "Service cannot be scaled in state: SCALING")
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["COOLDOWN"])
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"], timeout=20)
    nodes = role_nodes(cloud, service_id, "supernode")
    assert len(nodes) == 4 and nodes[:2] == first
    assert f"supernode_3_(service_{service_id})" == one.vm.info(nodes[3]).NAME
    for wanted, message in (
        (9, "Maximum cardinality is 5"),
        (0, "Minimum cardinality is 1"),
        (4, "Cardinality of supernode is already at 4"),
    ):
        reply = flow(
            cloud, "POST", f"/service/{service_id}/scale", {"role_name": "supernode", "cardinality": wanted}
        )
        assert reply.status_code == 500 and message in reply.text
    reply = flow(cloud, "POST", f"/service/{service_id}/scale", {"role_name": "nobody", "cardinality": 1})
    assert (reply.status_code, reply.text) == (500, "Role nobody not found")
    reply = flow(cloud, "POST", f"/service/{service_id}/scale", {"role_name": "supernode", "cardinality": 2})
    assert reply.status_code == 204
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"], timeout=20)
    assert role_nodes(cloud, service_id, "supernode") == nodes[2:]  # OneFlow removes the oldest nodes
    assert all(one.vm.info(v).STATE == 6 for v in nodes[:2])


def test_undeploy_in_reverse_order_then_the_service_is_gone(cloud: Any, one: Any) -> None:
    service_id = two_role_service(cloud, one, ready_gate=False)
    reply = flow(cloud, "DELETE", f"/service/{service_id}")
    assert reply.status_code == 500 and reply.text.startswith("Service cannot be undeployed in state: DEPLOY")
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"])
    server = role_nodes(cloud, service_id, "superlink")[0]
    clients = role_nodes(cloud, service_id, "supernode")
    assert flow(cloud, "DELETE", f"/service/{service_id}").status_code == 204
    body = service_body(cloud, service_id)
    assert body["state"] == SERVICE["UNDEPLOYING"]
    assert [r["state"] for r in body["roles"]] == [ROLE["RUNNING"], ROLE["UNDEPLOYING"]]  # children first
    assert one.vm.info(server).STATE == 3
    wait_for(lambda: flow(cloud, "GET", f"/service/{service_id}").status_code == 404)
    assert all(one.vm.info(v).STATE == 6 for v in [server, *clients])


def test_failed_vm_fails_the_role_and_recover_delete_cleans_up(cloud: Any, one: Any, tmp_path: Path) -> None:
    image_id = ready_image(one, make_qcow2(tmp_path / "d.qcow2"))
    Path(one.image.info(image_id).SOURCE).unlink()  # the datastore lost the file: the prolog will fail
    broken = one.template.allocate(f'NAME="b"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]')
    reply = flow(cloud, "POST", "/service_template", minimal(broken, cardinality=1))
    template_id = reply.json()["DOCUMENT"]["ID"]
    reply = flow(
        cloud, "POST", f"/service_template/{template_id}/action", {"action": {"perform": "instantiate"}}
    )
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["FAILED_DEPLOYING"])
    vm_id = role_nodes(cloud, service_id, "only")[0]
    assert one.vm.info(vm_id).LCM_STATE == 39  # PROLOG_FAILURE
    assert "image" in one.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    assert service_body(cloud, service_id)["roles"][0]["state"] == ROLE["FAILED_DEPLOYING"]
    reply = flow(cloud, "DELETE", f"/service/{service_id}")
    assert (reply.status_code, reply.text) == (500, "Service cannot be undeployed in state: FAILED_DEPLOYING")
    reply = flow(
        cloud,
        "POST",
        f"/service/{service_id}/action",
        {"action": {"perform": "recover", "params": {"delete": True}}},
    )
    assert reply.status_code == 204
    wait_for(lambda: flow(cloud, "GET", f"/service/{service_id}").status_code == 404)
    wait_for(lambda: one.vm.info(vm_id).STATE == 6)


def test_instantiate_errors(cloud: Any, one: Any) -> None:
    reply = flow(cloud, "POST", "/service_template/99/action", {"action": {"perform": "instantiate"}})
    assert (reply.status_code, reply.text) == (404, "[one.document.info] Error getting document [99].")
    vm_template = one.template.allocate('NAME="t"\nCPU="1"\nMEMORY="64"')
    template_id = flow(cloud, "POST", "/service_template", minimal(vm_template)).json()["DOCUMENT"]["ID"]
    reply = flow(cloud, "POST", f"/service_template/{template_id}/action", {"action": {"perform": "fly"}})
    assert (reply.status_code, reply.text) == (500, "Action fly not supported")
    bad_merge = {
        "action": {
            "perform": "instantiate",
            "params": {"merge_template": {"roles": [{"name": "only", "cardinality": "many"}]}},
        }
    }
    reply = flow(cloud, "POST", f"/service_template/{template_id}/action", bad_merge)
    assert (reply.status_code, reply.text) == (500, "KEY: 'cardinality' must be an Integer;")
    assert flow(cloud, "GET", "/service").json() == {"DOCUMENT_POOL": {}}


def test_role_referring_to_a_missing_vm_template_fails_the_service(cloud: Any, one: Any) -> None:
    template = minimal(77, cardinality=1, template_contents={"CONTEXT": {"A": "1"}})
    template_id = flow(cloud, "POST", "/service_template", template).json()["DOCUMENT"]["ID"]
    reply = flow(
        cloud, "POST", f"/service_template/{template_id}/action", {"action": {"perform": "instantiate"}}
    )
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["FAILED_DEPLOYING"])
    log = [entry["message"] for entry in service_body(cloud, service_id)["log"]]
    assert any("Error getting virtual machine template [77]" in message for message in log)


def test_service_template_body_round_trips_untouched(cloud: Any, one: Any) -> None:
    vm_template = one.template.allocate('NAME="t"\nCPU="1"\nMEMORY="64"')
    template = minimal(vm_template, cardinality=1)
    template["custom"] = {"kept": ["as", "is"]}
    original = copy.deepcopy(template)
    body = flow(cloud, "POST", "/service_template", template).json()["DOCUMENT"]["TEMPLATE"]["BODY"]
    assert body["custom"] == original["custom"]  # extra keys are allowed and kept


def test_failing_node_turns_the_running_service_to_warning_and_back(cloud: Any, one: Any) -> None:
    from testcloud.drivers.base import GuestState

    service_id = two_role_service(cloud, one, ready_gate=False)
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"])
    node = role_nodes(cloud, service_id, "supernode")[0]
    driver = cloud.cloud.vms.driver_for(0)
    driver._states[node] = GuestState.FAILED
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["WARNING"], timeout=15)
    assert service_body(cloud, service_id)["roles"][1]["state"] == 4  # the role too
    driver._states[node] = GuestState.RUNNING
    wait_for(lambda: service_body(cloud, service_id)["state"] == SERVICE["RUNNING"], timeout=15)
    one.vm.action("terminate-hard", node)  # a node terminated behind OneFlow's back leaves the role
    wait_for(lambda: node not in role_nodes(cloud, service_id, "supernode"), timeout=15)
    assert service_body(cloud, service_id)["roles"][1]["cardinality"] == 1


def test_the_published_service_body_needs_its_network_and_inputs_and_deploys_with_them(
    cloud: Any, one: Any
) -> None:
    """The body the factory publishes (factory/harness/appliance_templates.py), roles bound to VM templates as
    the exporter binds them: OneFlow refuses it without input values, deploys it with the picked network."""
    from factory.harness import appliance_templates

    body = appliance_templates.service_template("published", None, None, 1, security=None)
    for role in body["roles"]:
        role["vm_template"] = one.template.allocate(f'NAME="{role["name"]}"\nCPU="1"\nMEMORY="64"')
    reply = flow(cloud, "POST", "/service_template", body)
    assert reply.status_code == 201, reply.text
    template_id = reply.json()["DOCUMENT"]["ID"]

    def instantiate(merge: dict[str, Any]) -> Any:
        action = {"action": {"perform": "instantiate", "params": {"merge_template": merge}}}
        return flow(cloud, "POST", f"/service_template/{template_id}/action", action)

    network = {"networks_values": [{appliance_templates.NETWORK: {"id": "0"}}]}
    reply = instantiate(network)
    assert (reply.status_code, reply.text) == (
        400,
        "The Service template specifies User Inputs but no values have been found",
    )
    defaults = {key: spec.split("|")[4] for key, spec in body["user_inputs"].items()}
    reply = instantiate({**network, "user_inputs_values": defaults})
    assert reply.status_code == 201, reply.text
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    vm = one.vm.info(wait_for(lambda: role_nodes(cloud, service_id, "superlink"))[0])
    assert vm.TEMPLATE["NIC"]["NETWORK_ID"] == "0"  # $Private: the network picked
    assert vm.TEMPLATE["CONTEXT"]["ONEAPP_FL_FLEET_PORT"] == "9092"  # the default, through CONTEXT
