"""OneGate through plain HTTP clients, as the onegate CLI (form bodies) and curl (raw bodies) call it."""

from __future__ import annotations

import http.client
import urllib.parse
from typing import Any

import pytest
import requests
from cloudtest_helpers import (
    gate_headers,
    report_ready,
    role_nodes,
    running_vm,
    service_body,
    two_role_service,
    wait_for,
)

GUEST = (
    'NAME="guest"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nCONTEXT=[TOKEN="YES", NETWORK="YES"]\n'
    + 'LABELS="l"'
)


@pytest.fixture
def guest(one: Any, cloud: Any) -> tuple[int, dict[str, str]]:
    vm_id = running_vm(one, GUEST)
    return vm_id, gate_headers(cloud, vm_id)


def gate(cloud: Any, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return requests.request(
        method, cloud.endpoints["onegate"] + path, headers=headers or {}, timeout=10, **kwargs
    )


def test_get_vm(cloud: Any, one: Any, guest: tuple[int, dict[str, str]]) -> None:
    vm_id, headers = guest
    reply = gate(cloud, "GET", "/vm", headers)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    vm = one.vm.info(vm_id)
    nic = vm.TEMPLATE["NIC"]
    assert reply.json() == {
        "VM": {
            "NAME": "guest",
            "ID": str(vm_id),
            "STATE": "3",
            "LCM_STATE": "3",
            "USER_TEMPLATE": {"LABELS": "l"},
            "TEMPLATE": {
                "NIC": [{"IP": nic["IP"], "MAC": nic["MAC"], "NAME": "NIC0", "NETWORK": "testcloud"}],
                "NIC_ALIAS": [],
            },
        }
    }


@pytest.mark.parametrize(
    "change",
    [
        lambda h: {},
        lambda h: {"X-ONEGATE-VMID": h["X-ONEGATE-VMID"]},
        lambda h: {"X-ONEGATE-TOKEN": h["X-ONEGATE-TOKEN"]},
        lambda h: {**h, "X-ONEGATE-TOKEN": "bm90IGEgdG9rZW4="},
        lambda h: {**h, "X-ONEGATE-TOKEN": "%%%"},
        lambda h: {**h, "X-ONEGATE-VMID": "12345"},
        lambda h: {**h, "X-ONEGATE-VMID": "x"},
    ],
    ids=["none", "no-token", "no-vmid", "wrong-token", "garbage-token", "unknown-vm", "bad-vmid"],
)
def test_bad_credentials(cloud: Any, guest: tuple[int, dict[str, str]], change: Any) -> None:
    reply = gate(cloud, "GET", "/vm", change(guest[1]))
    assert (reply.status_code, reply.text) == (401, "Not authorized")


def test_token_of_another_vm_is_refused(cloud: Any, one: Any, guest: tuple[int, dict[str, str]]) -> None:
    other = running_vm(one, GUEST)
    mixed = {"X-ONEGATE-TOKEN": guest[1]["X-ONEGATE-TOKEN"], "X-ONEGATE-VMID": str(other)}
    assert gate(cloud, "GET", "/vm", mixed).status_code == 401
    assert gate(cloud, "PUT", "/vm", mixed, data="READY=YES").status_code == 401
    assert "READY" not in one.vm.info(other).USER_TEMPLATE


def test_put_vm_as_the_onegate_cli_sends_it(cloud: Any, one: Any, guest: tuple[int, dict[str, str]]) -> None:
    """``onegate vm update --data "K=V\\nK2=V2"``: a form body data=...&type=1."""
    vm_id, headers = guest
    body = urllib.parse.urlencode({"data": "READY=YES\nMESSAGE=all set and ready", "type": 1})
    form = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    reply = gate(cloud, "PUT", "/vm", form, data=body)
    assert (reply.status_code, reply.text) == (200, "")
    user_template = one.vm.info(vm_id).USER_TEMPLATE
    assert (user_template["READY"], user_template["MESSAGE"], user_template["LABELS"]) == (
        "YES",
        "all set and ready",
        "l",
    )
    erase = urllib.parse.urlencode({"data": "MESSAGE", "type": 2})
    assert gate(cloud, "PUT", "/vm", form, data=erase).status_code == 200
    assert "MESSAGE" not in one.vm.info(vm_id).USER_TEMPLATE
    missing = gate(cloud, "PUT", "/vm", form, data=urllib.parse.urlencode({"data": "NOPE", "type": 2}))
    assert (missing.status_code, missing.text) == (500, "attribute not found")


def test_put_vm_with_a_raw_body_as_curl_sends_it(
    cloud: Any, one: Any, guest: tuple[int, dict[str, str]]
) -> None:
    """``curl -X PUT --data-binary 'K=V...'``: a raw body, labelled form-urlencoded by curl."""
    vm_id, headers = guest
    url = urllib.parse.urlsplit(cloud.endpoints["onegate"])
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    body = b"ONEGATE_STATUS=bootstrap done\nPORT=9093"
    connection.request("PUT", "/vm", body, {**headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert connection.getresponse().status == 200
    connection.close()
    user_template = one.vm.info(vm_id).USER_TEMPLATE
    assert (user_template["ONEGATE_STATUS"], user_template["PORT"]) == ("bootstrap done", "9093")


@pytest.mark.parametrize("key", ["SERVICE_ID", "ROLE_NAME", "SCHED_REQUIREMENTS", "service_id"])
def test_restricted_attributes(cloud: Any, one: Any, guest: tuple[int, dict[str, str]], key: str) -> None:
    vm_id, headers = guest
    reply = gate(cloud, "PUT", "/vm", headers, data=f"READY=YES\n{key}=7")
    assert (reply.status_code, reply.text) == (403, f"Attribute ({key}) cannot be modified")
    reply = gate(cloud, "PUT", "/vm", headers, data={"data": key, "type": "2"})
    assert (reply.status_code, reply.text) == (403, f"Attribute ({key}) cannot be deleted")
    assert "READY" not in one.vm.info(vm_id).USER_TEMPLATE  # nothing of the refused update applied


def test_unsupported_paths_and_service_of_a_lone_vm(cloud: Any, guest: tuple[int, dict[str, str]]) -> None:
    headers = guest[1]
    for method, path in (("GET", "/nothing"), ("POST", "/vm"), ("DELETE", "/vm"), ("GET", "/vm/extra")):
        reply = gate(cloud, method, path, headers)
        assert (reply.status_code, reply.text) == (400, "OneGate server doesn't support this feature"), path
    reply = gate(cloud, "GET", "/service", headers)
    assert (reply.status_code, reply.text) == (400, "Empty or invalid SERVICE_ID")
    reply = gate(cloud, "GET", "/vms/0", headers)
    assert reply.status_code == 200  # a VM may always read itself
    reply = gate(cloud, "GET", "/vms/999", headers)
    assert reply.status_code == 400
    assert reply.text.startswith("This VM does not belong to any Virtual Router or Service")


def test_actions_on_itself(cloud: Any, one: Any, guest: tuple[int, dict[str, str]]) -> None:
    vm_id, headers = guest
    reply = gate(cloud, "POST", f"/vms/{vm_id}/action", headers, json={"action": {"perform": "reboot"}})
    assert (reply.status_code, reply.text) == (403, "Action (reboot) is not allowed on this resource")
    reply = gate(cloud, "POST", f"/vms/{vm_id}/action", headers, json={"action": {"perform": "resume"}})
    assert reply.status_code == 500 and "not available for state RUNNING" in reply.text
    reply = gate(cloud, "POST", f"/vms/{vm_id}/action", headers, json={"action": {"perform": "poweroff"}})
    assert reply.status_code == 204
    wait_for(lambda: one.vm.info(vm_id).STATE == 8)


def test_service_views_from_inside_a_service(cloud: Any, one: Any) -> None:
    service_id = two_role_service(cloud, one)
    server = wait_for(lambda: role_nodes(cloud, service_id, "superlink"))[0]
    wait_for(lambda: one.vm.info(server).LCM_STATE == 3)
    report_ready(cloud, server)
    clients = wait_for(
        lambda: (
            len(role_nodes(cloud, service_id, "supernode")) == 2
            and role_nodes(cloud, service_id, "supernode")
        )
    )
    wait_for(lambda: all(one.vm.info(c).LCM_STATE == 3 for c in clients))
    headers = gate_headers(cloud, clients[0])
    reply = gate(cloud, "GET", "/service", headers)
    assert reply.status_code == 200
    service = reply.json()["SERVICE"]
    assert (service["name"], service["id"]) == ("fl-test", str(service_id))
    assert [r["name"] for r in service["roles"]] == ["superlink", "supernode"]
    node = service["roles"][0]["nodes"][0]
    assert node["deploy_id"] == server
    assert node["vm_info"]["VM"]["NAME"] == f"superlink_0_(service_{service_id})"
    assert set(node["vm_info"]["VM"]) == {"ID", "UID", "GID", "UNAME", "GNAME", "NAME"}
    # a SuperNode reads the SuperLink it belongs with, and what it published
    one.vm.update(server, 'ONEGATE_FL_ENDPOINT="10.231.64.2:9092"', 1)
    reply = gate(cloud, "GET", f"/vms/{server}", headers)
    assert reply.status_code == 200
    assert reply.json()["VM"]["USER_TEMPLATE"]["ONEGATE_FL_ENDPOINT"] == "10.231.64.2:9092"
    assert reply.json()["VM"]["USER_TEMPLATE"]["SERVICE_ID"] == str(service_id)
    outsider = running_vm(one, GUEST)
    reply = gate(cloud, "GET", f"/vms/{outsider}", headers)
    assert (reply.status_code, reply.text) == (400, f"Service {service_id} does not contain VM {outsider}.")
    for client in clients:
        report_ready(cloud, client)
    wait_for(lambda: service_body(cloud, service_id)["state"] == 2)
    reply = gate(cloud, "PUT", "/service/role/supernode", headers, json={"cardinality": 3})
    assert (reply.status_code, reply.text) == (200, "")
    wait_for(lambda: len(role_nodes(cloud, service_id, "supernode")) == 3)
    reply = gate(cloud, "PUT", "/service/role/supernode", headers, json={"cardinality": 9})
    assert reply.status_code == 400
    assert reply.text == f"Error performing action on service {service_id} role supernode"
