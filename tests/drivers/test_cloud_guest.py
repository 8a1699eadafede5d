"""A guest of the real test cloud (core from main + container driver + test image + OpenNebula's one-context):
pyone instantiates it, the guest reports READY through the cloud's own OneGate (real token auth), SSH
works with the context's key, and terminate leaves nothing on the host."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest

from hostkit.host import mounts_under
from hostkit.waiting import wait_until
from testcloud import launcher
from testcloud.drivers import network

from .conftest import SshKey
from .test_container import _ssh

pytestmark = pytest.mark.cloud


def _wait(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    return wait_until(check, timeout, interval=0.2, what=what, error=AssertionError)


def _ssh_diagnostics(cloud: Any, vm_id: int) -> str:
    driver = cloud.cloud.vms.driver_for(0)
    script = "systemctl status --no-pager ssh.service 2>&1 | tail -n 15; ss -ltn; ip -4 -br addr"
    result = driver.execute(vm_id, ["sh", "-c", script], timeout=20)
    return f"rc={result.returncode}\n{result.stdout}{result.stderr}"


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Any]:
    handle = launcher.start(tmp_path / "cloud", driver="container")
    try:
        yield handle
    finally:
        handle.stop()


def test_a_cloud_guest_reports_ready_through_the_real_onegate(
    cloud: Any, test_image: Path, ssh_key: SshKey, tmp_path: Path
) -> None:
    one = pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
    image_id = one.image.allocate(f'NAME="drivers-test"\nPATH="{test_image}"\nTYPE="OS"', 1)
    _wait(lambda: one.image.info(image_id).STATE == 1, "image READY")
    template = (
        'NAME="ready-test"\nCPU="1"\nMEMORY="256"\n'
        f'DISK=[IMAGE_ID="{image_id}"]\nNIC=[NETWORK_ID="0"]\n'
        'CONTEXT=[NETWORK="YES", TOKEN="YES", REPORT_READY="YES", SET_HOSTNAME="$NAME",\n'
        f'  SSH_PUBLIC_KEY="{ssh_key.public_line}"]'
    )
    vm_id = one.vm.allocate(template, False)
    _wait(lambda: one.vm.info(vm_id).LCM_STATE == 3, "VM RUNNING")
    _wait(lambda: (one.vm.info(vm_id).USER_TEMPLATE or {}).get("READY") == "YES", "READY=YES via OneGate")

    vm = one.vm.info(vm_id)
    nic = vm.TEMPLATE["NIC"]
    nic = nic[0] if isinstance(nic, list) else nic
    assert network.SUBNET.overlaps(network.ipaddress.ip_network(nic["IP"] + "/32"))
    try:
        hostname = _ssh(nic["IP"], ssh_key, "hostname", timeout=120)
    except OSError as error:  # say what the guest's sshd was doing, not only that port 22 refused
        guest = _ssh_diagnostics(cloud, vm_id)
        raise AssertionError(f"SSH to {nic['IP']} failed ({error}); guest: {guest}") from error
    assert hostname.strip() == "ready-test"

    tag = network.cloud_tag(tmp_path / "cloud" / "drivers" / "container")
    assert len(network.links_with_prefix(network.link_prefix(tag))) == 1, "the guest's veth, by its name"
    assert mounts_under(tmp_path) != []

    one.vm.action("terminate-hard", vm_id)
    _wait(lambda: one.vm.info(vm_id).STATE == 6, "VM DONE")
    assert mounts_under(tmp_path) == []
    assert network.links_with_prefix(network.link_prefix(tag)) == []
    assert network.namespaces_with_prefix(network.namespace_prefix(tag)) == []
