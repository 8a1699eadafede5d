"""Deploying a service template that has user inputs and a ``networks`` entry, with the tools a user has
(docs/deploy.md): ``oneflow-template instantiate`` with a values file and interactively, and the OneFlow REST
call pyone users make. The template is in OneFlow 7's format (``src/flow/lib/models/service_template.rb``):
roles' NICs name the network as ``$<network name>``; a user input is ``M|O|type|description|params|default``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cloudtest_helpers import flow, service_body, wait_for
from onecli import OneCli

from testcloud import launcher

RUNNING = 2
NEEDS_VALUES = "The Service template specifies User Inputs but no values have been found"


@pytest.fixture
def cli(cloud: launcher.CloudHandle, make_one_cli: Callable[..., OneCli]) -> OneCli:
    return make_one_cli(cloud.endpoints)


@pytest.fixture
def flower_template(cloud: launcher.CloudHandle, one: Any) -> int:
    """A SuperLink + SuperNode service template as the factory publishes it: user inputs with defaults, one
    network picked at instantiation (default: existing network 0)."""
    context = 'CONTEXT=[NETWORK="YES", TOKEN="YES", REPORT_READY="NO"]'
    vm_template = one.template.allocate(f'NAME="flower-vm"\nCPU="1"\nMEMORY="128"\n{context}')
    nic = {"NIC": [{"NETWORK_ID": "$flower_net"}]}
    body = {
        "name": "flower",
        "deployment": "straight",
        "networks": {"flower_net": "M|network|The network of the Flower pair| |id:0"},
        "user_inputs": {
            "ONEAPP_FL_NUM_ROUNDS": "O|number|Federated rounds| |3",
            "ONEAPP_FL_APP": "M|text|Flower app to run| |numpy",
        },
        "roles": [
            {"name": "superlink", "type": "vm", "template_id": vm_template, "cardinality": 1,
             "template_contents": nic},
            {"name": "supernode", "type": "vm", "template_id": vm_template, "cardinality": 2,
             "parents": ["superlink"], "template_contents": nic},
        ],
    }  # fmt: skip
    reply = flow(cloud, "POST", "/service_template", body)
    assert reply.status_code == 201, reply.text
    return int(reply.json()["DOCUMENT"]["ID"])


def deployed(cloud: launcher.CloudHandle, one: Any, service_id: int) -> list[Any]:
    """The service reaches RUNNING; returns its VMs."""
    wait_for(lambda: service_body(cloud, service_id).get("state") == RUNNING, timeout=30)
    body = service_body(cloud, service_id)
    return [one.vm.info(int(n["deploy_id"])) for r in body["roles"] for n in r["nodes"]]


def assert_inputs_reached_the_vms(vms: list[Any], rounds: str, app: str, network_id: str = "0") -> None:
    assert len(vms) == 3
    for vm in vms:
        context = vm.TEMPLATE["CONTEXT"]
        assert (context["ONEAPP_FL_NUM_ROUNDS"], context["ONEAPP_FL_APP"]) == (rounds, app), vm.NAME
        assert vm.TEMPLATE["NIC"]["NETWORK_ID"] == network_id
        assert context["ETH0_IP"] == vm.TEMPLATE["NIC"]["IP"]


def test_cli_with_a_values_file(
    cloud: launcher.CloudHandle, one: Any, cli: OneCli, flower_template: int, tmp_path: Path
) -> None:
    values = tmp_path / "values.json"
    values.write_text(
        json.dumps(
            {
                "user_inputs_values": {"ONEAPP_FL_NUM_ROUNDS": "5", "ONEAPP_FL_APP": "sklearn"},
                "networks_values": [{"flower_net": {"id": "0"}}],
            }
        )
    )
    done = cli.run("oneflow-template", "instantiate", str(flower_template), str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    service_id = int(re.search(r"ID: (\d+)", done.stdout).group(1))
    assert_inputs_reached_the_vms(deployed(cloud, one, service_id), "5", "sklearn")


def test_cli_values_file_without_user_inputs_is_refused(
    cloud: launcher.CloudHandle, one: Any, cli: OneCli, flower_template: int, tmp_path: Path
) -> None:
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"networks_values": [{"flower_net": {"id": "0"}}]}))
    done = cli.run("oneflow-template", "instantiate", str(flower_template), str(values))
    assert done.returncode != 0
    assert NEEDS_VALUES in done.stdout + done.stderr
    assert not one.documentpool.info(-2, -1, -1, 100).DOCUMENT


def test_cli_asks_for_inputs_and_network_on_a_terminal(
    cloud: launcher.CloudHandle, one: Any, cli: OneCli, flower_template: int
) -> None:
    """Without a file, oneflow-template (oneflowtemplate_helper.rb) prompts for each user input, then for
    each network (type: existing/create/reserve, then the id); Enter takes the default."""
    status, transcript = cli.interact(
        "oneflow-template",
        "instantiate",
        str(flower_template),
        dialog=[
            ("(ONEAPP_FL_NUM_ROUNDS) Federated rounds", ""),  # a number: Enter keeps the default 3
            ("(ONEAPP_FL_APP) Flower app to run", "pytorch"),
            ("TYPE Existing(1), Create(2), Reserve(3).", ""),  # the default: an existing network
            ("VN ID. Press enter for default (0).", ""),
        ],
    )
    assert status == 0, transcript
    service_id = int(re.search(r"^ID: (\d+)", transcript, re.MULTILINE).group(1))
    assert_inputs_reached_the_vms(deployed(cloud, one, service_id), "3", "pytorch")


def test_rest_call_as_pyone_users_make_it(
    cloud: launcher.CloudHandle, one: Any, flower_template: int
) -> None:
    """pyone has no OneFlow client: a user POSTs the instantiate action to OneFlow's REST API."""
    action = {"action": {"perform": "instantiate", "params": {"merge_template": {}}}}
    reply = flow(cloud, "POST", f"/service_template/{flower_template}/action", action)
    assert (reply.status_code, NEEDS_VALUES in reply.text) == (400, True), reply.text
    merge = {
        "name": "my-flower",
        "user_inputs_values": {"ONEAPP_FL_NUM_ROUNDS": "4", "ONEAPP_FL_APP": "tensorflow"},
        "networks_values": [{"flower_net": {"id": "0"}}],
    }
    action["action"]["params"]["merge_template"] = merge
    reply = flow(cloud, "POST", f"/service_template/{flower_template}/action", action)
    assert reply.status_code == 201, reply.text
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    assert_inputs_reached_the_vms(deployed(cloud, one, service_id), "4", "tensorflow")


def test_rest_call_with_a_network_that_does_not_exist(
    cloud: launcher.CloudHandle, one: Any, flower_template: int
) -> None:
    merge = {
        "user_inputs_values": {"ONEAPP_FL_NUM_ROUNDS": "4", "ONEAPP_FL_APP": "numpy"},
        "networks_values": [{"flower_net": {"id": "42"}}],
    }
    action = {"action": {"perform": "instantiate", "params": {"merge_template": merge}}}
    reply = flow(cloud, "POST", f"/service_template/{flower_template}/action", action)
    assert reply.status_code == 201, reply.text
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    failed_deploying = 7
    wait_for(lambda: service_body(cloud, service_id).get("state") == failed_deploying, timeout=30)
    body = service_body(cloud, service_id)
    assert any("Virtual network with ID: 42 does not exist" in str(entry) for entry in body["log"]), (
        body["log"],
        body,
    )
    assert not [vm for vm in one.vmpool.info(-2, -1, -1, -1).VM if vm.STATE != 6]
