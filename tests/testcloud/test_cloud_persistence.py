"""A restart of the test cloud loses nothing: objects, ids, states, tokens, services; running guests are
re-attached through the driver's recover(); a full stop leaves VMs POWEROFF, ready to resume."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyone
import requests
from cloudtest_helpers import (
    FAST,
    SLOW,
    flow,
    gate_headers,
    make_qcow2,
    ready_image,
    role_nodes,
    running_vm,
    service_body,
    two_role_service,
    wait_for,
)

from testcloud import launcher

VOLATILE = re.compile(r"<(LAST_POLL|TIMESTAMP)>\d+</\1>")


def stable(xml: str) -> str:
    return VOLATILE.sub("", xml)


def raw(handle: Any, method: str, *params: Any) -> str:
    import xmlrpc.client

    return getattr(xmlrpc.client.ServerProxy(handle.endpoints["xmlrpc"]), method)(handle.auth, *params)[1]


# the pool listings compared before and after a restart, with their parameters
POOL_CALLS = {
    "one.vmpool.infoextended": (-2, -1, -1, -2),
    "one.imagepool.info": (-2, -1, -1),
    "one.templatepool.info": (-2, -1, -1),
    "one.vn.info": (0,),
    "one.marketapppool.info": (-2, -1, -1),
    "one.documentpool.info": (-2, -1, -1, 100),
}


def start(state: Path, timings: Any = FAST) -> tuple[Any, pyone.OneServer]:
    """A test cloud (dummy driver) on ``state``, and a pyone client of it."""
    handle = launcher.start(state, driver="dummy", timings=timings)
    return handle, pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)


@contextmanager
def restarted(state: Path) -> Iterator[tuple[Any, pyone.OneServer]]:
    """The test cloud started again on ``state``, stopped when the block ends."""
    handle, one = start(state)
    try:
        yield handle, one
    finally:
        handle.stop()


def test_restart_keeps_everything_and_reattaches_guests(tmp_path: Path) -> None:
    state = tmp_path / "cloud"
    handle, one = start(state)
    image_id = ready_image(one, make_qcow2(tmp_path / "d.qcow2"))
    vm_id = running_vm(
        one,
        f'NAME="keep"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]\n'
        'NIC=[NETWORK_ID="0"]\nCONTEXT=[TOKEN="YES", NETWORK="YES"]',
    )
    one.vm.update(vm_id, 'READY="YES"', 1)
    service_id = two_role_service(handle, one, ready_gate=False)
    wait_for(lambda: service_body(handle, service_id)["state"] == 2)
    app_id = one.marketapp.allocate(f'NAME="app"\nORIGIN_ID="{image_id}"', 1)
    wait_for(lambda: one.marketapp.info(app_id).STATE == 1)
    dropped = one.template.allocate('NAME="dropped"\nCPU="1"\nMEMORY="64"')
    one.template.delete(dropped)
    before = {method: stable(raw(handle, method, *params)) for method, params in POOL_CALLS.items()}
    endpoints, headers = dict(handle.endpoints), gate_headers(handle, vm_id)
    handle.stop(keep_guests=True)

    with restarted(state) as (handle, one):
        # same ports, same password: guests' ONEGATE_ENDPOINT still works
        assert handle.endpoints == endpoints
        for method, xml in before.items():
            assert stable(raw(handle, method, *POOL_CALLS[method])) == xml, method
        assert one.vm.info(vm_id).LCM_STATE == 3  # recovered, not rebooted
        reply = requests.get(handle.endpoints["onegate"] + "/vm", headers=headers, timeout=10)
        assert reply.status_code == 200 and reply.json()["VM"]["USER_TEMPLATE"]["READY"] == "YES"
        assert (
            one.template.allocate('NAME="next"\nCPU="1"\nMEMORY="64"') == dropped + 1
        )  # ids are never reused
        reply = flow(
            handle, "POST", f"/service/{service_id}/scale", {"role_name": "supernode", "cardinality": 3}
        )
        assert reply.status_code == 204
        wait_for(lambda: len(role_nodes(handle, service_id, "supernode")) == 3)
        assert requests.get(one.marketapp.info(app_id).SOURCE, timeout=10).status_code == 200


def test_full_stop_powers_guests_off_and_they_resume(tmp_path: Path) -> None:
    state = tmp_path / "cloud"
    handle, one = start(state)
    vm_id = running_vm(one)
    held = one.vm.allocate('NAME="held"\nCPU="1"\nMEMORY="64"', True)
    handle.stop()
    assert not (state / "vms" / str(vm_id) / "dummy-guest.json").exists()  # the driver's guest is gone
    with restarted(state) as (_, one):
        assert one.vm.info(vm_id).STATE == 8  # POWEROFF
        assert one.vm.info(held).STATE == 2
        one.vm.action("resume", vm_id)
        wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3)


def test_work_in_progress_resumes_after_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "cloud"
    handle, one = start(state, SLOW)
    image_id = one.image.allocate(f'NAME="i"\nPATH="{make_qcow2(tmp_path / "d.qcow2")}"', 1)
    vm_id = one.vm.allocate('NAME="p"\nCPU="1"\nMEMORY="64"')
    assert one.image.info(image_id).STATE == 4 and one.vm.info(vm_id).STATE == 1
    handle.stop(keep_guests=True)
    with restarted(state) as (_, one):
        wait_for(lambda: one.image.info(image_id).STATE == 1)
        wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3)


def test_state_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "cloud"
    handle, _ = start(state)
    handle.stop()
    assert state.stat().st_mode & 0o077 == 0
    for name in ("one_auth", "ports.json", "db/counters.json", "db/user/0.json"):
        assert (state / name).stat().st_mode & 0o077 == 0, name
