"""A running OneFlow service of dummy VMs (no guests) in a test cloud, for the appliance scripts' host tests:
they run here with the VMs' own OneGate tokens, as if inside the SuperLink or a SuperNode."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyone
import requests
from appliance_cloud import wait_for


@dataclass(frozen=True)
class DummyService:
    one: Any  # pyone.OneServer of the cloud
    template: int  # the VM template of both roles (CONTEXT TOKEN=YES)
    service: int
    superlink: int  # VM ids
    supernodes: list[int]


def start_dummy_service(cloud: Any, name: str, supernodes: int, *, nic: bool = False) -> DummyService:
    """Instantiate ``1 superlink + supernodes`` (straight: SuperNodes after the SuperLink) and wait for
    RUNNING. ``cloud`` is a ``testcloud.launcher.CloudHandle`` started with the dummy driver. ``nic``: each VM
    gets a NIC on the test network (an address OpenNebula sets) and the network in its context."""
    one = pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
    if nic:
        template = one.template.allocate(
            'NAME="vm"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nCONTEXT=[NETWORK="YES", TOKEN="YES"]'
        )
    else:
        template = one.template.allocate('NAME="vm"\nCPU="1"\nMEMORY="64"\nCONTEXT=[TOKEN="YES"]')
    user, _, password = cloud.auth.partition(":")
    url, auth = cloud.endpoints["oneflow"], (user, password)
    supernode = {"name": "supernode", "type": "vm", "template_id": template, "parents": ["superlink"]}
    roles = [
        {"name": "superlink", "type": "vm", "template_id": template, "cardinality": 1},
        {**supernode, "cardinality": supernodes},
    ]
    body = {"name": name, "deployment": "straight", "roles": roles}
    reply = requests.post(f"{url}/service_template", json=body, auth=auth, timeout=30)
    template_id = reply.json()["DOCUMENT"]["ID"]
    reply = requests.post(
        f"{url}/service_template/{template_id}/action",
        json={"action": {"perform": "instantiate"}},
        auth=auth,
        timeout=30,
    )
    service_id = int(reply.json()["DOCUMENT"]["ID"])

    def state() -> dict[str, Any]:
        document = requests.get(f"{url}/service/{service_id}", auth=auth, timeout=30).json()
        return document["DOCUMENT"]["TEMPLATE"]["BODY"]

    wait_for(lambda: state()["state"] == 2, 120, interval=0.2, what="service RUNNING")
    nodes = {role["name"]: sorted(int(n["deploy_id"]) for n in role["nodes"]) for role in state()["roles"]}
    return DummyService(one, template, service_id, nodes["superlink"][0], nodes["supernode"])
