"""Images are real files in the datastore directory; size and format come from the file; bad input gets
oned's error and leaves nothing behind."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pyone
import pytest
from cloudtest_helpers import FAST, make_qcow2, make_raw, ready_image, wait_for

from testcloud import launcher


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def datastore_files(cloud: Any) -> list[Path]:
    return sorted(p for p in (cloud.state_dir / "datastores" / "1").iterdir() if p.is_file())


def test_qcow2_image_size_and_format_from_the_file(one: Any, cloud: Any, tmp_path: Path) -> None:
    source = make_qcow2(tmp_path / "disk.qcow2", "100M")
    before = md5(source)
    image_id = ready_image(one, source, "disk")
    image = one.image.info(image_id)
    assert (image.FORMAT, image.SIZE, image.TYPE, image.PERSISTENT) == ("qcow2", 100, 0, 0)
    assert str(source) == image.PATH
    assert Path(image.SOURCE).parent == cloud.state_dir / "datastores" / "1"
    assert md5(Path(image.SOURCE)) == before == md5(source)  # a copy; the original is untouched
    assert image.TEMPLATE["DEV_PREFIX"] == "vd"
    assert (image.DATASTORE_ID, image.DATASTORE) == (1, "default")


def test_raw_image_and_sparse_copy(one: Any, tmp_path: Path) -> None:
    source = make_raw(tmp_path / "fs.img", 5 * 2**20 + 1)
    image = one.image.info(ready_image(one, source, "fs"))
    assert (image.FORMAT, image.SIZE) == ("raw", 6)  # MB, rounded up
    assert Path(image.SOURCE).read_bytes() == source.read_bytes()
    assert Path(image.SOURCE).stat().st_blocks * 512 < source.stat().st_size  # holes stay holes


def test_image_is_locked_until_copied(slow_cloud: Any, tmp_path: Path) -> None:
    one = pyone.OneServer(slow_cloud.endpoints["xmlrpc"], session=slow_cloud.auth)
    image_id = one.image.allocate(f'NAME="slow"\nPATH="{make_qcow2(tmp_path / "d.qcow2")}"', 1)
    assert one.image.info(image_id).STATE == 4  # LOCKED
    assert one.image.info(image_id).SOURCE == ""
    wait_for(lambda: one.image.info(image_id).STATE == 1)
    assert one.image.info(image_id).SOURCE


def test_vm_waits_in_cloning_for_a_locked_image(slow_cloud: Any, tmp_path: Path) -> None:
    one = pyone.OneServer(slow_cloud.endpoints["xmlrpc"], session=slow_cloud.auth)
    image_id = one.image.allocate(f'NAME="c"\nPATH="{make_qcow2(tmp_path / "d.qcow2")}"', 1)
    vm_id = one.vm.allocate(f'NAME="v"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]')
    assert one.vm.info(vm_id).STATE == 10  # CLONING
    assert one.image.info(image_id).STATE == 9  # LOCKED_USED
    wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3)
    vm = one.vm.info(vm_id)
    assert vm.TEMPLATE["DISK"]["SOURCE"] == one.image.info(image_id).SOURCE
    assert vm.TEMPLATE["DISK"]["TARGET"] == "vda" and vm.TEMPLATE["DISK"]["FORMAT"] == "qcow2"


def test_missing_file(one: Any, cloud: Any, tmp_path: Path) -> None:
    missing = tmp_path / "nope.qcow2"
    with pytest.raises(pyone.OneInternalException) as error:
        one.image.allocate(f'NAME="m"\nPATH="{missing}"', 1)
    assert (
        str(error.value)
        == f"[one.image.allocate] Cannot parse image SIZE: Cannot determine size for {missing}"
    )
    assert one.imagepool.info(-2, -1, -1).IMAGE == []
    assert datastore_files(cloud) == []


def test_oversized_image(one: Any, cloud: Any, tmp_path: Path) -> None:
    huge = make_qcow2(tmp_path / "huge.qcow2", "100T")  # a few hundred KB on disk, 100 TiB virtual
    with pytest.raises(pyone.OneActionException) as error:
        one.image.allocate(f'NAME="huge"\nPATH="{huge}"', 1)
    assert str(error.value) == "[one.image.allocate] Not enough space in datastore"
    assert one.imagepool.info(-2, -1, -1).IMAGE == []
    assert datastore_files(cloud) == []


def test_datastore_limit(tmp_path: Path) -> None:
    handle = launcher.start(tmp_path / "c", driver="dummy", timings=FAST, datastore_limit_mb=50)
    try:
        one = pyone.OneServer(handle.endpoints["xmlrpc"], session=handle.auth)
        ds = one.datastorepool.info().DATASTORE[1]
        assert (ds.TOTAL_MB, ds.FREE_MB) == (50, 50)
        ready_image(one, make_qcow2(tmp_path / "a.qcow2", "40M"), "a")
        assert one.datastorepool.info().DATASTORE[1].FREE_MB == 10
        with pytest.raises(pyone.OneActionException, match="Not enough space in datastore"):
            one.image.allocate(f'NAME="b"\nPATH="{make_qcow2(tmp_path / "b.qcow2", "20M")}"', 1)
    finally:
        handle.stop()


def test_allocate_errors(one: Any, tmp_path: Path) -> None:
    path = make_qcow2(tmp_path / "x.qcow2")
    image_id = ready_image(one, path, "taken")
    cases = [
        (
            f'NAME="taken"\nPATH="{path}"',
            1,
            pyone.OneException,
            f"[one.image.allocate] Error allocating a new image. NAME is already taken by IMAGE {image_id}.",
        ),
        (
            f'PATH="{path}"',
            1,
            pyone.OneException,
            "[one.image.allocate] Error allocating a new image. Invalid NAME, it cannot be empty",
        ),
        (
            f'NAME="s"\nPATH="{path}"',
            0,
            pyone.OneException,
            "[one.image.allocate] Error allocating a new image. "
            "New images can only be allocated in a files or image datastore.",
        ),
        (
            f'NAME="n"\nPATH="{path}"',
            9,
            pyone.OneNoExistsException,
            "[one.image.allocate] Error getting datastore [9].",
        ),
        (
            f'NAME="k"\nPATH="{path}"\nTYPE="KERNEL"',
            1,
            pyone.OneException,
            "[one.image.allocate] Error allocating a new image. "
            "IMAGES of type KERNEL, RAMDISK and CONTEXT cannot be registered in an IMAGE_DS datastore",
        ),
        (
            'NAME="src"\nSOURCE="/x"',
            1,
            pyone.OneInternalException,
            "[one.image.allocate] Cannot parse image SIZE: Wrong number or missing SIZE attribute.",
        ),
        (
            f'NAME="both"\nSOURCE="/x"\nSIZE="1"\nPATH="{path}"',
            1,
            pyone.OneException,
            "[one.image.allocate] Error allocating a new image. PATH and SOURCE cannot be both set.",
        ),
        (
            'NAME="cd"\nTYPE="CDROM"',
            1,
            pyone.OneInternalException,
            "[one.image.allocate] Cannot parse image SIZE: Either PATH or SOURCE are required for CDROM",
        ),
        ("NAME = [", 1, pyone.OneInternalException, "[one.image.allocate] Parse error: syntax error"),
    ]
    for template, ds_id, kind, message in cases:
        with pytest.raises(kind) as error:
            one.image.allocate(template, ds_id)
        assert str(error.value).startswith(message), template
    assert [i.ID for i in one.imagepool.info(-2, -1, -1).IMAGE] == [image_id]


def test_empty_datablock_is_a_sparse_raw_file(one: Any) -> None:
    image_id = one.image.allocate('NAME="blank"\nTYPE="DATABLOCK"\nSIZE="20"', 1)
    wait_for(lambda: one.image.info(image_id).STATE == 1)
    image = one.image.info(image_id)
    assert (image.TYPE, image.FORMAT, image.SIZE) == (2, "raw", 20)
    info = subprocess.run(
        ["qemu-img", "info", image.SOURCE], capture_output=True, text=True, check=True
    ).stdout
    assert "virtual size: 20 MiB" in info


def test_delete(one: Any, cloud: Any, tmp_path: Path) -> None:
    image_id = ready_image(one, make_qcow2(tmp_path / "d.qcow2"), "del")
    source = Path(one.image.info(image_id).SOURCE)
    vm_id = one.vm.allocate(f'NAME="v"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]')
    with pytest.raises(pyone.OneActionException) as error:
        one.image.delete(image_id)
    assert str(error.value) == "[one.image.delete] Cannot delete image. There are 1 VMs using it."
    assert source.exists()
    # terminate is refused in PROLOG/BOOT (as by oned): on a loaded host the 50 ms PENDING can be over here
    wait_for(lambda: one.vm.info(vm_id).LCM_STATE == 3)  # RUNNING
    one.vm.action("terminate", vm_id)
    wait_for(lambda: one.vm.info(vm_id).STATE == 6)
    assert one.image.delete(image_id) == image_id
    assert not source.exists()
    with pytest.raises(
        pyone.OneNoExistsException, match=rf"\[one.image.info\] Error getting image \[{image_id}\]"
    ):
        one.image.info(image_id)
    with pytest.raises(pyone.OneNoExistsException):
        one.image.delete(image_id)
    assert datastore_files(cloud) == []


def test_disk_errors_leave_nothing_acquired(one: Any, tmp_path: Path) -> None:
    image_id = ready_image(one, make_qcow2(tmp_path / "d.qcow2"), "ok")
    with pytest.raises(pyone.OneException, match="Image with ID: 99 does not exist"):
        one.vm.allocate(f'NAME="v"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE_ID="{image_id}"]\nDISK=[IMAGE_ID="99"]')
    assert one.image.info(image_id).STATE == 1 and one.image.info(image_id).RUNNING_VMS == 0
    with pytest.raises(pyone.OneException, match="does not own an image with name: other"):
        one.vm.allocate('NAME="v"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE="other"]')
    by_name = one.vm.allocate('NAME="v"\nCPU="1"\nMEMORY="64"\nDISK=[IMAGE="ok", IMAGE_UNAME="oneadmin"]')
    assert one.vm.info(by_name).TEMPLATE["DISK"]["IMAGE_ID"] == str(image_id)
