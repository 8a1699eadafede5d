"""The VM state machine walks in time, so clients really see PENDING, PROLOG, BOOT, SHUTDOWN, EPILOG."""

from __future__ import annotations

import time
from typing import Any

import pyone
from cloudtest_helpers import running_vm, wait_for

PENDING, ACTIVE, DONE, POWEROFF = 1, 3, 6, 8
PROLOG, BOOT, RUNNING, EPILOG, SHUTDOWN, SHUTDOWN_POWEROFF = 1, 2, 3, 11, 12, 18


def watch(one: Any, vm_id: int, until: tuple[int, int], timeout: float = 10.0) -> list[tuple[int, int]]:
    """The (STATE, LCM_STATE) pairs a polling client sees, in order, until ``until``."""
    seen: list[tuple[int, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        vm = one.vm.info(vm_id)
        pair = (vm.STATE, vm.LCM_STATE)
        if not seen or seen[-1] != pair:
            seen.append(pair)
        if pair == until:
            return seen
        time.sleep(0.03)
    raise AssertionError(f"VM {vm_id} never reached {until}; saw {seen}")


def test_instantiate_path_and_terminate_path_are_observable(slow_cloud: Any) -> None:
    one = pyone.OneServer(slow_cloud.endpoints["xmlrpc"], session=slow_cloud.auth)
    template_id = one.template.allocate('NAME="w"\nCPU="1"\nMEMORY="64"')
    vm_id = one.template.instantiate(template_id, "", False, "", False)
    seen = watch(one, vm_id, (ACTIVE, RUNNING))
    assert seen == [(PENDING, 0), (ACTIVE, PROLOG), (ACTIVE, BOOT), (ACTIVE, RUNNING)]
    history = one.vm.info(vm_id).HISTORY_RECORDS.HISTORY[0]
    assert (history.HOSTNAME, history.HID, history.SEQ) == ("nspawn", 0, 0)
    assert 0 < history.PSTIME <= history.PETIME <= history.RSTIME
    one.vm.action("terminate", vm_id)
    seen = watch(one, vm_id, (DONE, 0))
    assert seen == [(ACTIVE, SHUTDOWN), (ACTIVE, EPILOG), (DONE, 0)]
    vm = one.vm.info(vm_id)
    assert vm.ETIME >= vm.STIME > 0
    assert (vm.PREV_STATE, vm.PREV_LCM_STATE) == (ACTIVE, EPILOG)


def test_poweroff_and_resume_are_observable(slow_cloud: Any) -> None:
    one = pyone.OneServer(slow_cloud.endpoints["xmlrpc"], session=slow_cloud.auth)
    vm_id = running_vm(one)
    one.vm.action("poweroff", vm_id)
    assert watch(one, vm_id, (POWEROFF, 0)) == [(ACTIVE, SHUTDOWN_POWEROFF), (POWEROFF, 0)]
    one.vm.action("resume", vm_id)
    assert watch(one, vm_id, (ACTIVE, RUNNING)) == [(ACTIVE, 20), (ACTIVE, RUNNING)]  # BOOT_POWEROFF


def test_hold_release_and_terminate_of_a_pending_vm(slow_cloud: Any) -> None:
    one = pyone.OneServer(slow_cloud.endpoints["xmlrpc"], session=slow_cloud.auth)
    vm_id = one.vm.allocate('NAME="p"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]')
    one.vm.action("hold", vm_id)
    time.sleep(0.6)
    assert one.vm.info(vm_id).STATE == 2  # a held VM is not deployed
    one.vm.action("release", vm_id)
    assert one.vm.info(vm_id).STATE == PENDING
    one.vm.action("terminate", vm_id)
    vm = one.vm.info(vm_id)
    assert vm.STATE == DONE  # a VM that never ran is done at once
    assert one.vn.info(0).USED_LEASES == 0


def test_qemu_host_is_chosen_by_sched_requirements(one: Any) -> None:
    vm_id = running_vm(one, 'NAME="k"\nCPU="1"\nMEMORY="64"\nSCHED_REQUIREMENTS="HYPERVISOR=\\"kvm\\""')
    history = one.vm.info(vm_id).HISTORY_RECORDS.HISTORY[0]
    assert (history.HOSTNAME, history.HID) == ("qemu", 1)
    default = running_vm(one)
    assert one.vm.info(default).HISTORY_RECORDS.HISTORY[0].HOSTNAME == "nspawn"


def test_undeploy_and_resume_make_a_new_history_record(one: Any) -> None:
    vm_id = running_vm(one)
    one.vm.action("undeploy", vm_id)
    wait_for(lambda: one.vm.info(vm_id).STATE == 9)
    one.vm.action("resume", vm_id)
    wait_for(lambda: one.vm.info(vm_id).LCM_STATE == RUNNING)
    records = one.vm.info(vm_id).HISTORY_RECORDS.HISTORY
    assert [r.SEQ for r in records] == [0, 1]
    assert records[0].ACTION == 5 and records[0].ETIME > 0  # UNDEPLOY


def test_driver_failures_become_oned_failure_states(cloud: Any, one: Any) -> None:
    """When the hypervisor fails: BOOT_FAILURE with the reason, UNKNOWN for a dead guest."""
    from testcloud.drivers.base import GuestState

    driver = cloud.cloud.vms.driver_for(0)
    original = driver.launch

    def broken(spec: Any) -> None:
        raise RuntimeError("no space left on the hypervisor")

    driver.launch = broken
    try:
        vm_id = one.vm.allocate('NAME="f"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]')
        wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 36)  # BOOT_FAILURE
    finally:
        driver.launch = original
    assert "no space left on the hypervisor" in one.vm.info(vm_id).USER_TEMPLATE["ERROR"]
    one.vm.action("terminate", vm_id)  # a failed VM is cleaned up (CLEANUP_DELETE) and DONE
    wait_for(lambda: one.vm.info(vm_id).STATE == DONE)
    assert one.vn.info(0).USED_LEASES == 0
    alive = running_vm(one)
    driver._states[alive] = GuestState.FAILED  # the guest dies under the running VM
    wait_for(lambda: one.vm.info(alive).LCM_STATE == 16, timeout=15)  # UNKNOWN
    driver._states[alive] = GuestState.RUNNING
    wait_for(lambda: one.vm.info(alive).LCM_STATE == RUNNING, timeout=15)
    driver._states[alive] = GuestState.STOPPED  # it shut itself down
    wait_for(lambda: one.vm.info(alive).STATE == POWEROFF, timeout=15)


def test_state_numbers_are_oneds() -> None:
    """The core's state numbers are those of OpenNebula's enums (as pyone carries them)."""
    from testcloud.core import objects
    from testcloud.core.states import LcmState, VmState

    # every state pyone knows, by name and number (OpenNebula 7's Ruby OCA adds BACKUP..RESTORE after them)
    assert {s.name: s.value for s in pyone.LCM_STATE}.items() <= {s.name: s.value for s in LcmState}.items()
    assert {s.name: s.value for s in pyone.VM_STATE} == {s.name: s.value for s in VmState}
    assert list(LcmState) == [LcmState(n) for n in range(len(LcmState))]  # no gap
    for number, name in enumerate(objects.IMAGE_STATE_NAMES):
        assert pyone.IMAGE_STATES[name].value == number
