"""Issue 9 item 8: OneFlow templates whose services could never deploy, and bodies that crashed the server,
are refused with 400 and the reason; nothing is stored, no service is left hanging."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyone
import pytest
import requests
from cloudtest_helpers import FAST, flow

from testcloud import launcher


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    handle = launcher.start(tmp_path_factory.mktemp("flow-bad") / "cloud", driver="dummy", timings=FAST)
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def vm_template(shared: Any) -> int:
    one = pyone.OneServer(shared.endpoints["xmlrpc"], session=shared.auth)
    return int(one.template.allocate('NAME="t"\nCPU="1"\nMEMORY="64"'))


def _raw(cloud: Any, method: str, path: str, data: str) -> requests.Response:
    user, password = cloud.auth.split(":", 1)
    return requests.request(
        method, cloud.endpoints["oneflow"] + path, data=data, auth=(user, password), timeout=30
    )


def _template(vm_template: int, *roles: tuple[str, list[str]], **role_extra: Any) -> dict[str, Any]:
    return {
        "name": "bad",
        "deployment": "straight",
        "roles": [
            {"name": name, "type": "vm", "template_id": vm_template, "cardinality": 1, "parents": parents}
            | role_extra
            for name, parents in roles
        ],
    }


def _templates(cloud: Any) -> Any:
    return flow(cloud, "GET", "/service_template").json()


@pytest.mark.parametrize(
    ("roles", "reason"),
    [
        ((("a", ["a"]),), "Role 'a' has itself as a parent"),
        ((("a", []), ("b", ["ghost"])), "Role 'b' has parent 'ghost', which is not a role of this template"),
        ((("a", ["b"]), ("b", ["a"])), "Roles form a cycle through 'parents' ('a' -> 'b' -> 'a')"),
    ],
    ids=["self", "missing", "cycle"],
)
def test_templates_whose_roles_could_never_deploy_are_refused(
    shared: Any, vm_template: int, roles: Any, reason: str
) -> None:
    before = _templates(shared)
    reply = flow(shared, "POST", "/service_template", _template(vm_template, *roles))
    assert (reply.status_code, reason in reply.text) == (400, True), reply.text
    assert _templates(shared) == before
    good = flow(shared, "POST", "/service_template", _template(vm_template, ("a", []), ("b", ["a"])))
    assert good.status_code == 201, good.text
    template_id = good.json()["DOCUMENT"]["ID"]
    update = {
        "action": {
            "perform": "update",
            "params": {"template_json": json.dumps(_template(vm_template, *roles))},
        }
    }
    reply = flow(shared, "POST", f"/service_template/{template_id}/action", update)
    assert (reply.status_code, reason in reply.text) == (400, True), reply.text
    reply = flow(shared, "PUT", f"/service_template/{template_id}", _template(vm_template, *roles))
    assert (reply.status_code, reason in reply.text) == (400, True), reply.text
    assert flow(shared, "DELETE", f"/service_template/{template_id}").status_code == 204


def test_a_stored_cyclic_template_is_not_instantiated(shared: Any, vm_template: int) -> None:
    """One written past OneFlow (one.document.allocate, as an older stand-in stored it) deploys no service."""
    one = pyone.OneServer(shared.endpoints["xmlrpc"], session=shared.auth)
    body = json.dumps(_template(vm_template, ("a", ["b"]), ("b", ["a"])))
    xml = f"<TEMPLATE><NAME>cyclic</NAME><BODY><![CDATA[{body}]]></BODY></TEMPLATE>"
    template_id = one.document.allocate(xml, 101)
    reply = flow(
        shared, "POST", f"/service_template/{template_id}/action", {"action": {"perform": "instantiate"}}
    )
    assert reply.status_code >= 400 and "cycle through 'parents'" in reply.text, reply.text
    assert flow(shared, "GET", "/service").json() == {"DOCUMENT_POOL": {}}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":1.5}]}',
            "'cardinality' must be an Integer",
        ),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":1e400}]}',
            "number 1e400 is out of range",
        ),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":NaN}]}',
            "unexpected token at 'NaN'",
        ),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":-Infinity}]}',
            "unexpected token",
        ),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":'
            + "9" * 5000
            + "}]}",
            "unexpected number",
        ),
        (
            '{"name":"x","roles":[],"user_inputs_values":{"A":' + "[" * 101 + "]" * 101 + "}}",
            "nesting of 101 is too deep",
        ),
        ("[" * 100000 + "]" * 100000, "nesting of 101 is too deep"),
    ],
    ids=["fraction", "1e400", "nan", "infinity", "huge-int", "nesting-101", "nesting-100000"],
)
def test_numbers_and_nesting_ruby_json_would_refuse_are_400_with_the_reason(
    shared: Any, body: str, reason: str
) -> None:
    before = _templates(shared)
    reply = _raw(shared, "POST", "/service_template", body)
    assert (reply.status_code, reason in reply.text) == (400, True), reply.text[:300]
    assert "Traceback" not in reply.text and "Internal server error" not in reply.text
    assert _templates(shared) == before
    if "cardinality' must be" not in reason:  # the same body fails to parse wherever OneFlow reads JSON
        action = _raw(shared, "POST", "/service_template/0/action", body)
        assert (action.status_code, action.text) == (reply.status_code, reply.text)


def test_a_user_input_value_of_the_wrong_type_is_refused(shared: Any, vm_template: int) -> None:
    template = _template(vm_template, ("a", []))
    template["user_inputs"] = {"ROUNDS": "M|number|Rounds||3"}
    reply = flow(shared, "POST", "/service_template", template)
    assert reply.status_code == 201, reply.text
    template_id = reply.json()["DOCUMENT"]["ID"]

    def instantiate(value: str) -> requests.Response:
        merge = {"user_inputs_values": {"ROUNDS": value}}
        action = {"action": {"perform": "instantiate", "params": {"merge_template": merge}}}
        return flow(shared, "POST", f"/service_template/{template_id}/action", action)

    reply = instantiate("notanumber")
    assert (reply.status_code, reply.text) == (
        400,
        "User input 'ROUNDS' (number): 'notanumber' is not an Integer",
    )
    assert flow(shared, "GET", "/service").json() == {"DOCUMENT_POOL": {}}
    reply = instantiate("5")
    assert reply.status_code == 201, reply.text
    service_id = reply.json()["DOCUMENT"]["ID"]
    recover = {"action": {"perform": "recover", "params": {"delete": True}}}
    assert flow(shared, "POST", f"/service/{service_id}/action", recover).status_code == 204


def test_delete_of_a_service_that_does_not_exist_is_404_as_oneflow_answers(shared: Any) -> None:
    reply = flow(shared, "DELETE", "/service/4242")
    assert (reply.status_code, reply.text) == (404, "[one.document.info] Error getting document [4242].")
