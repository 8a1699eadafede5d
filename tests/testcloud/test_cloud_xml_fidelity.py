"""Every XML answer validates against oned's XSD (upstream one/share/doc/xsd) and pyone
parses it without losing anything."""

from __future__ import annotations

import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
from cloudtest_helpers import FAST, assert_lossless, assert_valid, make_qcow2, make_raw, ready_image, wait_for
from pyone import bindings

from testcloud import launcher


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, int]]]:
    """A cloud with one of everything, in as many states as the API shows."""
    base = tmp_path_factory.mktemp("fidelity")
    handle = launcher.start(base / "cloud", driver="dummy", timings=FAST)
    one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
    ids: dict[str, int] = {}
    ids["image"] = ready_image(one, make_qcow2(base / "os.qcow2"), "os")
    ids["datablock"] = ready_image(one, make_raw(base / "data.raw"), "data")
    ids["template"] = one.template.allocate(
        f'NAME="full"\nCPU="1"\nVCPU="2"\nMEMORY="128"\nDISK=[IMAGE_ID="{ids["image"]}"]\n'
        f'DISK=[IMAGE_ID="{ids["datablock"]}"]\nNIC=[NETWORK_ID="0"]\nNIC=[NETWORK_ID="0"]\n'
        'GRAPHICS=[TYPE="VNC", LISTEN="0.0.0.0"]\nOS=[ARCH="x86_64"]\nLABELS="test"\n'
        'CONTEXT=[NETWORK="YES", TOKEN="YES", START_SCRIPT="echo \\"hi\\"\necho <b>&amp;"]\nDESCRIPTION="d"'
    )
    ids["running"] = one.template.instantiate(ids["template"], "", False, "", False)
    ids["held"] = one.vm.allocate('NAME="held"\nCPU="1"\nMEMORY="64"', True)
    ids["done"] = one.vm.allocate('NAME="done"\nCPU="1"\nMEMORY="64"')
    wait_for(lambda: one.vm.info(ids["running"]).LCM_STATE == 3 and one.vm.info(ids["done"]).LCM_STATE == 3)
    one.vm.update(ids["running"], 'READY="YES"\nSCHED_REQUIREMENTS="ID=0"\nERROR="e"', 1)
    one.vm.action("terminate", ids["done"])
    wait_for(lambda: one.vm.info(ids["done"]).STATE == 6)
    ids["app"] = one.marketapp.allocate(f'NAME="app"\nORIGIN_ID="{ids["image"]}"\nVERSION="1.0"', 1)
    wait_for(lambda: one.marketapp.info(ids["app"]).STATE == 1)
    ids["document"] = one.document.allocate('NAME="doc"\nBODY="{}"', 100)
    yield handle, ids
    handle.stop()


def raw(handle: Any, method: str, *params: Any) -> str:
    ok, value, _code = getattr(xmlrpc.client.ServerProxy(handle.endpoints["xmlrpc"]), method)(
        handle.auth, *params
    )
    assert ok, value
    return value


CASES = [
    ("one.imagepool.info", (-2, -1, -1), "image_pool.xsd"),
    ("one.templatepool.info", (-2, -1, -1), "vmtemplate_pool.xsd"),
    ("one.vmpool.info", (-2, -1, -1, -2), "vm_pool.xsd"),
    ("one.vnpool.info", (-2, -1, -1), "vnet_pool.xsd"),
    ("one.vn.info", (0,), "vnet.xsd"),
    ("one.datastorepool.info", (), "datastore_pool.xsd"),
    ("one.datastore.info", (1,), "datastore.xsd"),
    ("one.market.info", (1,), "marketplace.xsd"),
    ("one.marketpool.info", (), "marketplace_pool.xsd"),
    ("one.marketapppool.info", (-2, -1, -1), "marketplaceapp_pool.xsd"),
    ("one.documentpool.info", (-2, -1, -1, 100), "document_pool.xsd"),
]
BY_ID = [
    ("one.image.info", "image", "image.xsd"),
    ("one.image.info", "datablock", "image.xsd"),
    ("one.template.info", "template", "vmtemplate.xsd"),
    ("one.vm.info", "running", "vm.xsd"),
    ("one.vm.info", "held", "vm.xsd"),
    ("one.vm.info", "done", "vm.xsd"),
    ("one.marketapp.info", "app", "marketplaceapp.xsd"),
    ("one.document.info", "document", "document.xsd"),
]


@pytest.mark.parametrize(("method", "params", "xsd"), CASES, ids=[c[0] for c in CASES])
def test_pool_answers_are_valid_and_lossless(
    populated: tuple[Any, dict[str, int]], method: str, params: tuple, xsd: str
) -> None:
    handle, _ = populated
    xml = raw(handle, method, *params)
    assert_valid(xml, xsd)
    assert_lossless(xml, bindings.parseString(xml.encode()))


@pytest.mark.parametrize(("method", "key", "xsd"), BY_ID, ids=[f"{c[0]}-{c[1]}" for c in BY_ID])
def test_object_answers_are_valid_and_lossless(
    populated: tuple[Any, dict[str, int]], method: str, key: str, xsd: str
) -> None:
    handle, ids = populated
    xml = raw(handle, method, ids[key])
    assert_valid(xml, xsd)
    assert_lossless(xml, bindings.parseString(xml.encode()))


def test_extended_pool_has_full_vms(populated: tuple[Any, dict[str, int]]) -> None:
    """pyone reads VM_POOL with the short VM's class, so each full VM is checked with the VM class."""
    from lxml import etree

    handle, _ = populated
    xml = raw(handle, "one.vmpool.infoextended", -2, -1, -1, -2)
    assert_valid(xml, "vm_pool_extended.xsd")
    bindings.parseString(xml.encode())
    vms = etree.fromstring(xml.encode())
    assert len(vms) == 3
    for vm in vms:
        single = etree.tostring(vm, encoding="unicode")
        assert_valid(single, "vm.xsd")
        assert_lossless(single, bindings.parseString(single.encode()))


def test_pools_hold_every_object(populated: tuple[Any, dict[str, int]]) -> None:
    handle, ids = populated
    one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
    assert len(one.vmpool.info(-2, -1, -1, -2).VM) == 3
    assert {i.ID for i in one.imagepool.info(-2, -1, -1).IMAGE} == {ids["image"], ids["datablock"]}


def test_transient_states_are_valid_too(tmp_path: Path) -> None:
    """A LOCKED image, a PENDING VM and a LOCKED app, caught while they last."""
    from cloudtest_helpers import SLOW

    handle = launcher.start(tmp_path / "cloud", driver="dummy", timings=SLOW)
    try:
        one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
        image_id = one.image.allocate(f'NAME="i"\nPATH="{make_qcow2(tmp_path / "x.qcow2")}"', 1)
        vm_id = one.vm.allocate('NAME="p"\nCPU="1"\nMEMORY="64"')
        assert one.image.info(image_id).STATE == 4
        assert one.vm.info(vm_id).STATE == 1
        for method, oid, xsd in (("one.image.info", image_id, "image.xsd"), ("one.vm.info", vm_id, "vm.xsd")):
            xml = raw(handle, method, oid)
            assert_valid(xml, xsd)
            assert_lossless(xml, bindings.parseString(xml.encode()))
        wait_for(lambda: one.image.info(image_id).STATE == 1)
        app_id = one.marketapp.allocate(f'NAME="a"\nORIGIN_ID="{image_id}"', 1)
        assert one.marketapp.info(app_id).STATE == 2
        assert_valid(raw(handle, "one.marketapp.info", app_id), "marketplaceapp.xsd")
    finally:
        handle.stop()


def test_the_validator_can_fail() -> None:
    """The checks above would notice a missing element or a misplaced one."""
    with pytest.raises(AssertionError):
        assert_valid("<DOCUMENT><ID>1</ID></DOCUMENT>", "document.xsd")
    bad_order = (
        "<VMTEMPLATE><UID>0</UID><ID>1</ID><GID>0</GID><UNAME>a</UNAME><GNAME>a</GNAME><NAME>n</NAME>"
        "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A><GROUP_U>0</GROUP_U>"
        "<GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A><OTHER_U>0</OTHER_U><OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A>"
        "</PERMISSIONS><REGTIME>0</REGTIME><TEMPLATE/></VMTEMPLATE>"
    )
    with pytest.raises(AssertionError):
        assert_valid(bad_order, "vmtemplate.xsd")

    class Lossy:
        ID = 1

    with pytest.raises(AssertionError, match="pyone lost"):
        assert_lossless("<X><ID>1</ID><NAME>n</NAME></X>", Lossy())
