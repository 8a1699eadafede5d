"""Every XML-RPC method through pyone: the happy path and the main error paths, with oned's codes and
messages."""

from __future__ import annotations

import xmlrpc.client
from pathlib import Path
from typing import Any

import pyone
import pytest
import requests
from cloudtest_helpers import make_qcow2, ready_image, running_vm, wait_for


def raw_call(cloud: Any, method: str, *params: Any) -> Any:
    """The call without pyone, to see the envelope itself."""
    proxy = xmlrpc.client.ServerProxy(cloud.endpoints["xmlrpc"])
    return getattr(proxy, method)(*params)


def test_envelope_of_success_and_failure(cloud: Any) -> None:
    assert raw_call(cloud, "one.system.version", cloud.auth) == [True, "7.3.80", 0]
    assert raw_call(cloud, "one.vm.info", cloud.auth, 4242) == [
        False,
        "[one.vm.info] Error getting virtual machine [4242].",
        0x0400,
        4242,
        0,
    ]
    body = xmlrpc.client.dumps((cloud.auth, 4242), "one.vm.info").encode()
    text = requests.post(cloud.endpoints["xmlrpc"], data=body, timeout=10).text
    assert "<i8>0</i8>" in text  # the replication index is an i8, as xmlrpc-c sends it


def test_xml_values_start_with_a_tag(cloud: Any) -> None:
    """pyone parses a value as XML only when its first character is '<'."""
    ok, value, code = raw_call(cloud, "one.datastorepool.info", cloud.auth)
    assert ok and code == 0 and value.startswith("<DATASTORE_POOL>")


def test_authentication(cloud: Any) -> None:
    user, password = cloud.auth.split(":", 1)
    for session in (f"{user}:wrong", f"nobody:{password}", "", "oneadmin"):
        bad = pyone.OneServer(cloud.endpoints["xmlrpc"], session=session)
        with pytest.raises(pyone.OneAuthenticationException) as error:
            bad.system.version()
        assert str(error.value) == "[one.system.version] User couldn't be authenticated, aborting call."


def test_only_rpc2_answers(cloud: Any) -> None:
    base = cloud.endpoints["xmlrpc"].rsplit("/", 1)[0]
    assert requests.post(base + "/other", data=b"x", timeout=10).status_code == 404
    assert requests.get(cloud.endpoints["xmlrpc"], timeout=10).status_code == 405


def test_unknown_method_and_bad_parameters_are_faults(cloud: Any) -> None:
    with pytest.raises(xmlrpc.client.Fault) as fault:
        raw_call(cloud, "one.vm.teleport", cloud.auth, 1)
    assert fault.value.faultCode == -506
    with pytest.raises(xmlrpc.client.Fault) as fault:
        raw_call(cloud, "one.vm.info", cloud.auth, "seven")
    assert fault.value.faultCode == -501
    with pytest.raises(xmlrpc.client.Fault) as fault:
        raw_call(cloud, "one.vm.action", cloud.auth, "terminate")
    assert fault.value.faultString == "Not enough parameters"
    with pytest.raises(xmlrpc.client.Fault):
        raw_call(cloud, "one.vm.info", 17, 0)


# ---------------------------------------------------------------------------------------------- pools
def test_initial_objects(one: Any) -> None:
    datastores = {ds.ID: (ds.NAME, ds.TYPE) for ds in one.datastorepool.info().DATASTORE}
    assert datastores == {0: ("system", 1), 1: ("default", 0), 2: ("files", 2)}
    markets = {m.ID: (m.NAME, m.MARKET_MAD) for m in one.marketpool.info().MARKETPLACE}
    assert markets == {0: ("OpenNebula Public", "one"), 1: ("testcloud", "http")}
    vnets = one.vnpool.info(-2, -1, -1).VNET
    assert [(v.ID, v.BRIDGE) for v in vnets] == [(0, "flbr0")]
    vnet = one.vn.info(0)
    assert vnet.TEMPLATE["NETWORK_ADDRESS"] == "10.231.64.0"
    assert vnet.TEMPLATE["NETWORK_MASK"] == "255.255.255.0"
    assert vnet.AR_POOL.AR[0].SIZE == 253


def test_pool_filters_and_ranges(one: Any, tmp_path: Path) -> None:
    ids = [one.template.allocate(f'NAME="t{i}"\nCPU="1"\nMEMORY="64"') for i in range(5)]
    every = [t.ID for t in one.templatepool.info(-2, -1, -1).VMTEMPLATE]
    assert every == ids
    assert [t.ID for t in one.templatepool.info(-2, ids[1], ids[3]).VMTEMPLATE] == ids[1:4]
    assert [t.ID for t in one.templatepool.info(-2, ids[2], -1).VMTEMPLATE] == ids[2:]
    assert [t.ID for t in one.templatepool.info(-2, 1, -2).VMTEMPLATE] == ids[1:3]  # a page: offset 1, size 2
    assert [t.ID for t in one.templatepool.info(0, -1, -1).VMTEMPLATE] == ids  # owned by user 0
    assert one.templatepool.info(7, -1, -1).VMTEMPLATE == []
    with pytest.raises(pyone.OneApiException, match=r"\[one.templatepool.info\] Incorrect filter_flag"):
        one.templatepool.info(-5, -1, -1)


# ---------------------------------------------------------------------------------------------- templates
def test_template_allocate_info_delete(one: Any) -> None:
    template_id = one.template.allocate('NAME="web"\nCPU="0.5"\nMEMORY="128"\nNIC=[NETWORK_ID="0"]\nLOGO="x"')
    info = one.template.info(template_id)
    assert (template_id, "web", "oneadmin") == (info.ID, info.NAME, info.UNAME)
    assert info.TEMPLATE["CPU"] == "0.5" and info.TEMPLATE["NIC"] == {"NETWORK_ID": "0"}
    assert "NAME" not in info.TEMPLATE
    with pytest.raises(pyone.OneInternalException) as error:
        one.template.allocate('NAME="web"\nCPU="1"')
    assert str(error.value) == f"[one.template.allocate] NAME is already taken by TEMPLATE {template_id}."
    with pytest.raises(pyone.OneInternalException, match="Invalid NAME, it cannot be empty"):
        one.template.allocate('CPU="1"')
    with pytest.raises(
        pyone.OneInternalException, match=r"\[one.template.allocate\] Parse error: syntax error"
    ):
        one.template.allocate('NAME = "x"\nCPU 1')
    assert one.template.update(template_id, 'DESCRIPTION="d"', 1) == template_id
    assert one.template.info(template_id).TEMPLATE["DESCRIPTION"] == "d"
    assert one.template.delete(template_id) == template_id
    with pytest.raises(pyone.OneNoExistsException) as error:
        one.template.info(template_id)
    assert str(error.value) == f"[one.template.info] Error getting virtual machine template [{template_id}]."
    with pytest.raises(pyone.OneNoExistsException):
        one.template.delete(template_id)


def test_template_instantiate(one: Any) -> None:
    template_id = one.template.allocate('NAME="base"\nCPU="1"\nMEMORY="128"\nCONTEXT=[A="1"]\nLABELS="x"')
    vm_id = one.template.instantiate(template_id, "", False, 'MEMORY="256"\nCONTEXT=[B="2"]', False)
    vm = one.vm.info(vm_id)
    assert f"base-{vm_id}" == vm.NAME
    assert vm.TEMPLATE["MEMORY"] == "256"
    assert vm.TEMPLATE["TEMPLATE_ID"] == str(template_id)
    assert vm.TEMPLATE["CONTEXT"]["B"] == "2" and "A" not in vm.TEMPLATE["CONTEXT"]  # merge replaces vectors
    named = one.template.instantiate(template_id, "my-vm", True, "", False)
    assert one.vm.info(named).NAME == "my-vm"
    assert one.vm.info(named).STATE == 2  # HOLD
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting virtual machine template \[99\]"):
        one.template.instantiate(99, "", False, "", False)
    with pytest.raises(pyone.OneInternalException, match="Parse error"):
        one.template.instantiate(template_id, "", False, "A = [", False)
    with pytest.raises(pyone.OneException) as error:
        one.template.instantiate(template_id, "", False, 'MEMORY="0"', False)
    assert str(error.value) == (
        "[one.template.instantiate] Error allocating a new virtual machine template. "
        "MEMORY attribute must be a positive integer value."
    )


# ---------------------------------------------------------------------------------------------- VMs
def test_vm_allocate_checks_cpu_memory_and_name(one: Any) -> None:
    cases = {
        'NAME="a"\nCPU="1"': "MEMORY attribute must be a positive integer value.",
        'NAME="a"\nMEMORY="64"': "CPU attribute must be a positive float or integer value.",
        'NAME="a"\nMEMORY="64"\nCPU="-1"': "CPU attribute must be a positive float or integer value.",
        'NAME="a"\nMEMORY="64"\nCPU="1"\nVCPU="x"': "VCPU attribute must be a positive integer value.",
        'NAME="a:b"\nMEMORY="64"\nCPU="1"': "Invalid NAME, char ':' is not allowed",
    }
    for template, reason in cases.items():
        with pytest.raises(pyone.OneException) as error:
            one.vm.allocate(template)
        assert str(error.value) == f"[one.vm.allocate] {reason}"
        assert isinstance(error.value, pyone.OneInternalException)
    assert one.vmpool.info(-2, -1, -1, -2).VM == []


def test_vm_full_and_short_forms(one: Any) -> None:
    vm_id = running_vm(
        one, 'NAME="v"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]\nCONTEXT=[TOKEN="YES"]\nLABELS="a"'
    )
    one.vm.update(vm_id, 'READY="YES"\nSCHED_REQUIREMENTS="ID>=0"', 1)
    full = one.vm.info(vm_id)
    assert "CONTEXT" in full.TEMPLATE and full.USER_TEMPLATE["READY"] == "YES"
    short = one.vmpool.info(-2, -1, -1, -1).VM[0]
    assert "CONTEXT" not in short.TEMPLATE
    assert dict(short.USER_TEMPLATE) == {"LABELS": "a", "SCHED_REQUIREMENTS": "ID>=0"}
    extended = one.vmpool.infoextended(-2, -1, -1, -1).VM[0]
    assert extended.USER_TEMPLATE["READY"] == "YES" and "CONTEXT" in extended.TEMPLATE
    assert full.HISTORY_RECORDS.HISTORY[0].VM_MAD == "dummy"
    assert f"one-{vm_id}" == full.DEPLOY_ID


def test_vmpool_state_filter(one: Any) -> None:
    done = running_vm(one)
    one.vm.action("terminate-hard", done)
    wait_for(lambda: one.vm.info(done).STATE == 6)
    held = one.vm.allocate('NAME="h"\nCPU="1"\nMEMORY="64"', True)
    assert [v.ID for v in one.vmpool.info(-2, -1, -1, -1).VM] == [held]
    assert [v.ID for v in one.vmpool.info(-2, -1, -1, -2).VM] == [done, held]
    assert [v.ID for v in one.vmpool.info(-2, -1, -1, 6).VM] == [done]
    assert [v.ID for v in one.vmpool.info(-2, -1, -1, 2).VM] == [held]
    assert one.vm.info(done).STATE == 6  # vm.info answers for DONE VMs
    with pytest.raises(pyone.OneApiException, match=r"Incorrect state filter 12"):
        one.vmpool.info(-2, -1, -1, 12)


def test_vm_update_replace_and_merge(one: Any) -> None:
    vm_id = one.vm.allocate('NAME="u"\nCPU="1"\nMEMORY="64"\nA="1"\nB="2"', True)
    assert one.vm.update(vm_id, 'B="3"\nC="4"', 1) == vm_id
    assert {k: v for k, v in one.vm.info(vm_id).USER_TEMPLATE.items()} == {"A": "1", "B": "3", "C": "4"}
    one.vm.update(vm_id, 'ONLY="this"', 0)
    assert dict(one.vm.info(vm_id).USER_TEMPLATE) == {"ONLY": "this"}
    with pytest.raises(pyone.OneApiException, match=r"\[one.vm.update\] Wrong update type"):
        one.vm.update(vm_id, 'X="1"', 2)
    with pytest.raises(pyone.OneActionException, match=r"\[one.vm.update\] Parse error"):
        one.vm.update(vm_id, "X = [", 1)
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.update(999, 'X="1"', 1)
    assert dict(one.vm.info(vm_id).USER_TEMPLATE) == {"ONLY": "this"}


def test_vm_actions_and_wrong_states(one: Any) -> None:
    vm_id = one.vm.allocate('NAME="a"\nCPU="1"\nMEMORY="64"', True)
    with pytest.raises(pyone.OneActionException) as error:
        one.vm.action("hold", vm_id)
    assert (
        str(error.value)
        == '[one.vm.action] Error performing action "hold": This action is not available for state HOLD'
    )
    with pytest.raises(pyone.OneActionException) as error:
        one.vm.action("teleport", vm_id)
    assert str(error.value) == '[one.vm.action] Action "teleport" is not supported'
    with pytest.raises(pyone.OneNoExistsException, match=r"Error getting virtual machine \[777\]"):
        one.vm.action("release", 777)
    with pytest.raises(pyone.OneActionException, match="not available for state HOLD"):
        one.vm.action("poweroff", vm_id)
    assert one.vm.action("release", vm_id) == vm_id
    wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3)
    for action, state, lcm in (
        ("poweroff", 8, 0),
        ("resume", 3, 3),
        ("undeploy", 9, 0),
        ("resume", 3, 3),
        ("suspend", 5, 0),
        ("resume", 3, 3),
        ("stop", 4, 0),
        ("resume", 3, 3),
    ):
        one.vm.action(action, vm_id)
        wait_for(lambda s=state, w=lcm: (s, w) == (one.vm.info(vm_id).STATE, one.vm.info(vm_id).LCM_STATE))
    one.vm.action("reboot", vm_id)
    one.vm.action("resched", vm_id)
    assert one.vm.info(vm_id).RESCHED == 1
    one.vm.action("unresched", vm_id)
    assert one.vm.info(vm_id).RESCHED == 0
    with pytest.raises(pyone.OneActionException, match="not available for state RUNNING"):
        one.vm.action("release", vm_id)
    one.vm.action("terminate", vm_id)
    wait_for(lambda: one.vm.info(vm_id).STATE == 6)
    with pytest.raises(pyone.OneActionException, match="not available for state DONE"):
        one.vm.action("resume", vm_id)
    assert one.vm.action("terminate", vm_id) == vm_id  # terminating a DONE VM is no error in oned
    history = one.vm.info(vm_id).HISTORY_RECORDS.HISTORY
    assert history[-1].ACTION == 27 and history[-1].ETIME > 0


def test_terminate_frees_leases_and_images(one: Any, tmp_path: Path) -> None:
    image_id = ready_image(one, make_qcow2(tmp_path / "d.qcow2"))
    vm_id = running_vm(
        one, f'NAME="l"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]\nNIC=[NETWORK_ID="0"]'
    )
    ip = one.vm.info(vm_id).TEMPLATE["NIC"]["IP"]
    assert one.image.info(image_id).STATE == 2  # USED
    assert one.image.info(image_id).RUNNING_VMS == 1
    assert one.vn.info(0).USED_LEASES == 1
    leases = one.vn.info(0).AR_POOL.AR[0].LEASES.LEASE
    assert [(lease.IP, lease.VM) for lease in leases] == [(ip, vm_id)]
    one.vm.action("terminate", vm_id)
    wait_for(lambda: one.vm.info(vm_id).STATE == 6)
    assert one.image.info(image_id).STATE == 1 and one.image.info(image_id).RUNNING_VMS == 0
    assert one.vn.info(0).USED_LEASES == 0
    again = running_vm(one, 'NAME="l2"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0"]')
    assert one.vm.info(again).TEMPLATE["NIC"]["IP"] == ip  # the address is free again


def test_nic_errors_and_requested_ip(one: Any) -> None:
    with pytest.raises(pyone.OneException, match="Virtual network with ID: 5 does not exist"):
        one.vm.allocate('NAME="n"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="5"]')
    vm_id = one.vm.allocate('NAME="n"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK="testcloud", IP="10.231.64.77"]')
    assert one.vm.info(vm_id).TEMPLATE["NIC"]["IP"] == "10.231.64.77"
    with pytest.raises(pyone.OneException, match=r"Cannot get IP/MAC lease from virtual network 0\."):
        one.vm.allocate('NAME="n2"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0", IP="10.231.64.77"]')
    with pytest.raises(pyone.OneException, match="Cannot get IP/MAC lease"):
        one.vm.allocate('NAME="n3"\nCPU="1"\nMEMORY="64"\nNIC=[NETWORK_ID="0", IP="192.0.2.1"]')
    assert one.vn.info(0).USED_LEASES == 1  # the failed allocations leaked nothing


# ---------------------------------------------------------------------------------------------- documents
def test_documents(one: Any) -> None:
    doc_id = one.document.allocate('NAME="svc"\nBODY="{\\"a\\":1}"', 100)
    other = one.document.allocate('NAME="tmpl"\nBODY="{}"', 101)
    doc = one.document.info(doc_id)
    assert (doc.NAME, doc.TYPE, doc.TEMPLATE["BODY"]) == ("svc", "100", '{"a":1}')
    assert [d.ID for d in one.documentpool.info(-2, -1, -1, 100).DOCUMENT] == [doc_id]
    assert [d.ID for d in one.documentpool.info(-2, -1, -1, 101).DOCUMENT] == [other]
    with pytest.raises(
        pyone.OneNoExistsException, match=r"\[one.document.info\] Error getting document \[55\]"
    ):
        one.document.info(55)
    unnamed = one.document.allocate('BODY="{}"', 100)
    assert f"document-{unnamed}" == one.document.info(unnamed).NAME
    with pytest.raises(pyone.OneInternalException, match=r"NAME is too long; max length is 128 chars\."):
        one.document.allocate(f'NAME="{"n" * 129}"', 100)
