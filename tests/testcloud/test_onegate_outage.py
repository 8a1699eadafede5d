"""One server of a running test cloud stopped and started again (``CloudHandle.stop_server`` and
``start_server``): the fault suite (tests/e2e/test_faults.py) stops OneGate while a service boots, as an
operator stopping ``opennebula-gate`` would; the rest of the cloud and its VMs carry on."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from cloudtest_helpers import gate_headers, running_vm

from testcloud.launcher import LaunchError

GUEST = 'NAME="guest"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nCONTEXT=[TOKEN="YES", NETWORK="YES"]'


def _get_vm(cloud: Any, headers: dict[str, str]) -> requests.Response:
    return requests.get(cloud.endpoints["onegate"] + "/vm", headers=headers, timeout=5)


def test_onegate_stops_and_starts_on_the_same_address(cloud: Any, one: Any) -> None:
    vm_id = running_vm(one, GUEST)
    headers = gate_headers(cloud, vm_id)
    assert _get_vm(cloud, headers).status_code == 200

    cloud.stop_server("onegate")
    with pytest.raises(requests.ConnectionError):
        _get_vm(cloud, headers)
    # the rest of the cloud still answers, and the VM's state does not change
    assert one.vm.info(vm_id).LCM_STATE == 3
    with pytest.raises(LaunchError, match="not running"):
        cloud.stop_server("onegate")

    cloud.start_server("onegate")
    reply = _get_vm(cloud, headers)
    assert reply.status_code == 200 and reply.json()["VM"]["ID"] == str(vm_id)
    # the same token still works: nothing of the VM was lost; a second start is refused
    with pytest.raises(LaunchError, match="was not stopped"):
        cloud.start_server("onegate")


def test_stop_server_refuses_an_unknown_name(cloud: Any) -> None:
    with pytest.raises(LaunchError, match="unknown server 'gate'"):
        cloud.stop_server("gate")
