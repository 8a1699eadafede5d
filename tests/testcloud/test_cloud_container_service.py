"""A two-role OneFlow service booted for real in systemd-nspawn containers, in order, through the ready gate.

Boots the tiny test image (``testcloud.drivers.testimage``, built once into the shared cache; its guest agent
reports READY through OneGate) unless ``FLOWER_TESTCLOUD_ROOTFS`` names another rootfs image.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
from cloudtest_helpers import flow, role_nodes, service_body, wait_for

from hostkit import onecontext
from testcloud import launcher
from testcloud.drivers import testimage

pytestmark = [pytest.mark.cloud]


@pytest.fixture(scope="module")
def rootfs() -> str:
    if os.environ.get("FLOWER_TESTCLOUD_ROOTFS"):
        return os.environ["FLOWER_TESTCLOUD_ROOTFS"]
    if (reason := onecontext.missing_reason()) is not None:  # the test image carries one-context from source
        pytest.skip(reason)
    return str(testimage.ext4_image())


@pytest.fixture
def container_cloud(tmp_path: Path) -> Iterator[Any]:
    handle = launcher.start(tmp_path / "cloud", driver="container")
    yield handle
    handle.stop()


def test_two_role_service_boots_in_order_with_the_ready_gate(container_cloud: Any, rootfs: str) -> None:
    one = pyone.OneServer(container_cloud.endpoints["xmlrpc"], session=container_cloud.auth)
    image_id = one.image.allocate(f'NAME="rootfs"\nPATH="{rootfs}"\nTYPE="OS"', 1)
    wait_for(lambda: one.image.info(image_id).STATE == 1, timeout=300)
    context = 'CONTEXT=[NETWORK="YES", TOKEN="YES", REPORT_READY="YES"]'
    base = f'CPU="1"\nMEMORY="256"\nDISK=[IMAGE_ID="{image_id}"]\nNIC=[NETWORK_ID="0"]\n{context}'
    server = one.template.allocate(f'NAME="server"\n{base}')
    client = one.template.allocate(f'NAME="client"\n{base}')
    template = {
        "name": "two-roles",
        "deployment": "straight",
        "ready_status_gate": True,
        "roles": [
            {"name": "superlink", "type": "vm", "template_id": server, "cardinality": 1},
            {
                "name": "supernode",
                "type": "vm",
                "template_id": client,
                "cardinality": 2,
                "parents": ["superlink"],
                "template_contents": {"CONTEXT": {"SUPERLINK_IP": "${superlink.template.context.eth0_ip}"}},
            },
        ],
    }
    template_id = flow(container_cloud, "POST", "/service_template", template).json()["DOCUMENT"]["ID"]
    reply = flow(
        container_cloud,
        "POST",
        f"/service_template/{template_id}/action",
        {"action": {"perform": "instantiate"}},
    )
    service_id = int(reply.json()["DOCUMENT"]["ID"])
    wait_for(lambda: service_body(container_cloud, service_id)["state"] == 2, timeout=600, interval=1)
    server_vm = role_nodes(container_cloud, service_id, "superlink")[0]
    server_ip = one.vm.info(server_vm).TEMPLATE["NIC"]["IP"]
    driver = container_cloud.cloud.vms.driver_for(0)
    for vm_id in [server_vm, *role_nodes(container_cloud, service_id, "supernode")]:
        vm = one.vm.info(vm_id)
        assert vm.USER_TEMPLATE["READY"] == "YES"  # sent by the guest itself
        assert driver.execute(vm_id, ["cat", "/proc/1/comm"]).stdout.strip() == "systemd"  # real units run
    client_vm = role_nodes(container_cloud, service_id, "supernode")[0]
    assert one.vm.info(client_vm).TEMPLATE["CONTEXT"]["SUPERLINK_IP"] == server_ip
    ping = driver.execute(client_vm, ["ping", "-c", "1", "-W", "5", server_ip])
    assert ping.returncode == 0, ping.stderr
    server_stime = one.vm.info(server_vm).HISTORY_RECORDS.HISTORY[0].RSTIME
    client_stime = one.vm.info(client_vm).HISTORY_RECORDS.HISTORY[0].STIME
    assert client_stime >= server_stime  # the clients were deployed after the server was ready
    assert flow(container_cloud, "DELETE", f"/service/{service_id}").status_code == 204
    wait_for(lambda: flow(container_cloud, "GET", f"/service/{service_id}").status_code == 404, timeout=300)
    assert all(one.vm.info(v).STATE == 6 for v in [server_vm, client_vm])
