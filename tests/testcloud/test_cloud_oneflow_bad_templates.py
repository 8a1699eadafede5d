"""Issue 9 item 8: templates whose services can never deploy, and bodies OneFlow cannot read, answered as
upstream OneFlow (OpenNebula/one f847cf2e, src/flow/) answers them: what it accepts is accepted and behaves
as there, its 400s and 500s come with its one-line bodies, never Python text. The factory defends itself
against what OneFlow accepts (factory/one/service_checks.py, tests/e2e/test_one_driver.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pyone
import pytest
import requests
from cloudtest_helpers import FAST, flow, service_body, wait_for

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


def _state(cloud: Any, service_id: int) -> str:
    return str(service_body(cloud, service_id)["state"])


@pytest.mark.parametrize(
    ("roles", "state", "deployed"),
    [
        ((("a", ["a"]),), 11, []),
        ((("a", []), ("b", ["ghost"])), 1, ["a"]),
        ((("a", ["b"]), ("b", ["a"])), 11, []),
    ],
    ids=["self", "missing", "cycle"],
)
def test_parents_problems_are_accepted_and_the_service_hangs_as_upstream(
    shared: Any, vm_template: int, roles: Any, state: int, deployed: list[str]
) -> None:
    """OneFlow never reads ``parents`` when it validates (opennebula/flow/service_template.rb): 201. Its
    straight strategy (src/flow/lib/strategy/straight.rb ``roles_deploy``) deploys only roles whose parents
    all run, and LifeCycleManager.rb ``deploy_action`` leaves the state alone when none is left: the service
    stays in DEPLOYING_NETS (11; DEPLOYING, 1, once a parentless role ran). ``undeploy_action`` refuses a
    transient state with a plain OpenNebula::Error, which ``one_error_to_http`` makes a 500 with its message;
    ``recover --delete`` removes the service."""
    reply = flow(shared, "POST", "/service_template", _template(vm_template, *roles))
    assert reply.status_code == 201, reply.text
    template_id = reply.json()["DOCUMENT"]["ID"]
    update = {
        "action": {
            "perform": "update",
            "params": {"template_json": json.dumps(_template(vm_template, *roles))},
        }
    }
    assert flow(shared, "POST", f"/service_template/{template_id}/action", update).status_code == 204
    assert (
        flow(shared, "PUT", f"/service_template/{template_id}", _template(vm_template, *roles)).status_code
        == 200
    )
    action = {"action": {"perform": "instantiate"}}
    reply = flow(shared, "POST", f"/service_template/{template_id}/action", action)
    assert reply.status_code == 201, reply.text
    service_id = reply.json()["DOCUMENT"]["ID"]

    def settled() -> bool:
        body = service_body(shared, service_id)
        running = sorted(r["name"] for r in body["roles"] if r["state"] == 2)
        return body["state"] == state and running == deployed

    wait_for(settled, timeout=20)
    time.sleep(1)  # and it stays there
    assert settled(), service_body(shared, service_id)
    states = {1: "DEPLOYING", 11: "DEPLOYING_NETS"}  # src/flow/lib/models/service.rb STATE
    reply = flow(shared, "DELETE", f"/service/{service_id}")
    assert (reply.status_code, reply.text) == (500, f"Service cannot be undeployed in state: {states[state]}")
    recover = {"action": {"perform": "recover", "params": {"delete": True}}}
    assert flow(shared, "POST", f"/service/{service_id}/action", recover).status_code == 204
    wait_for(lambda: flow(shared, "GET", f"/service/{service_id}").status_code == 404, timeout=20)
    assert flow(shared, "DELETE", f"/service_template/{template_id}").status_code == 204


def test_a_fraction_in_an_integer_key_is_truncated_as_ruby_integer(shared: Any, vm_template: int) -> None:
    """Validator.validate_integer (opennebula/flow/validator.rb) stores Integer(1.5), which is 1."""
    body = json.dumps(_template(vm_template, ("a", []))).replace('"cardinality": 1', '"cardinality": 1.5')
    reply = _raw(shared, "POST", "/service_template", body)
    assert reply.status_code == 201, reply.text
    template_id = reply.json()["DOCUMENT"]["ID"]
    assert reply.json()["DOCUMENT"]["TEMPLATE"]["BODY"]["roles"][0]["cardinality"] == 1
    assert flow(shared, "DELETE", f"/service_template/{template_id}").status_code == 204


def _sinatra_500(reason: str) -> str:
    return json.dumps({"message": "Internal server error", "reason": reason}, separators=(",", ":"))


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":1e400}]}',
            500,
            _sinatra_500("Infinity"),
        ),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":-1e400}]}',
            500,
            _sinatra_500("-Infinity"),
        ),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":NaN}]}',
            400,
            "unexpected token at 'NaN'",
        ),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":-Infinity}]}',
            400,
            "unexpected token at '-Infinity'",
        ),
        (
            '{"name":"x","roles":[],"user_inputs_values":{"A":' + "[" * 101 + "]" * 101 + "}}",
            400,
            "nesting of 101 is too deep",
        ),
        ("[" * 100000 + "]" * 100000, 400, "nesting of 101 is too deep"),
        (
            '{"name":"x","roles":[{"name":"r","type":"vm","template_id":0,"cardinality":'
            + "9" * 5000
            + "}]}",
            400,
            "unexpected number: an integer literal of more than 4300 digits",
        ),
    ],
    ids=["1e400", "-1e400", "nan", "infinity", "nesting-101", "nesting-100000", "huge-int-deviation"],
)
def test_bodies_ruby_refuses_get_oneflows_answer(shared: Any, body: str, status: int, text: str) -> None:
    """Ruby's JSON.parse reads 1e400 as Infinity, and Integer(Infinity) raises FloatDomainError, which
    neither validate_integer nor ``post '/service_template'`` rescues: Sinatra's ``error 500`` block answers
    {"message":"Internal server error","reason":...} (src/flow/oneflow-server.rb). NaN/Infinity literals and
    nesting past 100 (JSON::NestingError) are JSON::ParserError, which that route rescues as a 400 with the
    parser's message. No Python text in either. (huge-int: Ruby would read a Bignum; the stand-in refuses a
    literal Python cannot convert, a documented deviation.)"""
    before = _templates(shared)
    reply = _raw(shared, "POST", "/service_template", body)
    assert (reply.status_code, text in reply.text) == (status, True), reply.text[:300]
    assert not any(python in reply.text for python in ("Traceback", "Error:", "sys.", "int_max_str"))
    assert _templates(shared) == before


@pytest.mark.parametrize(
    "path",
    ["/service_template/0/action", "/service/0/action", "/service/0/scale"],
    ids=["tmpl", "svc", "scale"],
)
def test_an_action_body_ruby_cannot_parse_is_sinatras_500(shared: Any, path: str) -> None:
    """The action and scale routes of oneflow-server.rb call JSON.parse outside any rescue: a body the parser
    refuses is Sinatra's 500 with the parser's message as the reason."""
    reply = _raw(shared, "POST", path, "[" * 101 + "]" * 101)
    assert (reply.status_code, reply.text) == (500, _sinatra_500("nesting of 101 is too deep"))
    reply = _raw(shared, "POST", path, "{not json")
    assert reply.status_code == 500 and json.loads(reply.text)["message"] == "Internal server error"


def test_a_user_input_value_of_any_type_is_accepted_as_oneflow_does(shared: Any, vm_template: int) -> None:
    """check_user_inptus (src/flow/oneflow-server.rb) checks that every input has a value, never its type
    (only the CLI's prompt does, src/cli/one_helper.rb): 'notanumber' for a number is instantiated."""
    template = _template(vm_template, ("a", []))
    template["user_inputs"] = {"ROUNDS": "M|number|Rounds||3"}
    reply = flow(shared, "POST", "/service_template", template)
    assert reply.status_code == 201, reply.text
    template_id = reply.json()["DOCUMENT"]["ID"]
    merge = {"user_inputs_values": {"ROUNDS": "notanumber"}}
    action = {"action": {"perform": "instantiate", "params": {"merge_template": merge}}}
    reply = flow(shared, "POST", f"/service_template/{template_id}/action", action)
    assert reply.status_code == 201, reply.text
    service_id = reply.json()["DOCUMENT"]["ID"]
    assert service_body(shared, service_id)["user_inputs_values"] == {"ROUNDS": "notanumber"}
    recover = {"action": {"perform": "recover", "params": {"delete": True}}}
    assert flow(shared, "POST", f"/service/{service_id}/action", recover).status_code == 204
    reply = flow(
        shared, "POST", f"/service_template/{template_id}/action", {"action": {"perform": "instantiate"}}
    )
    assert (reply.status_code, reply.text) == (
        400,
        "The Service template specifies User Inputs but no values have been found",
    )


def test_delete_of_a_service_that_does_not_exist_is_404_as_oneflow_answers(shared: Any) -> None:
    reply = flow(shared, "DELETE", "/service/4242")
    assert (reply.status_code, reply.text) == (404, "[one.document.info] Error getting document [4242].")
