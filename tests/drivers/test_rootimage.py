"""Finding the root filesystem the container driver mounts, in each accepted image layout."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hostkit import diskimage
from hostkit.diskimage import MIB
from testcloud.drivers.base import DiskSpec
from testcloud.drivers.errors import DriverError
from testcloud.drivers.rootimage import root_filesystem


@pytest.fixture
def filesystem(tree: Path, tmp_path: Path) -> Path:
    return diskimage.make_ext4_image(tree, tmp_path / "fs.img", size=32 * MIB)


def test_a_filesystem_image_is_mounted_whole(filesystem: Path) -> None:
    root = root_filesystem(DiskSpec(filesystem, "raw", "vda"))
    assert (root.path, root.offset, root.size, root.fstype) == (filesystem, 0, None, "ext4")


def test_a_partitioned_disk_is_mounted_at_its_root_partition(filesystem: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as stream:
        stream.truncate(MIB + filesystem.stat().st_size)
    subprocess.run(["sfdisk", "--quiet", str(disk)], input=b"label: gpt\nstart=2048, name=root\n", check=True)
    subprocess.run(
        ["dd", f"if={filesystem}", f"of={disk}", "bs=1M", "seek=1", "conv=notrunc,sparse"],
        check=True,
        capture_output=True,
    )
    root = root_filesystem(DiskSpec(disk, "raw", "vda"))
    assert (root.offset, root.fstype) == (MIB, "ext4") and root.size is not None


def test_a_qcow2_is_converted_once_into_the_cache(filesystem: Path, tmp_path: Path) -> None:
    qcow2 = diskimage.convert(filesystem, tmp_path / "fs.qcow2", "qcow2", compress=True)
    cache = tmp_path / "cache"
    first = root_filesystem(DiskSpec(qcow2, "qcow2", "vda"), cache)
    second = root_filesystem(DiskSpec(qcow2, "qcow2", "vda"), cache)
    assert first == second and first.path.parent == cache and first.fstype == "ext4"
    assert diskimage.sha256_file(first.path) == diskimage.sha256_file(filesystem)
    assert first.path.stat().st_mtime_ns == second.path.stat().st_mtime_ns, "not converted twice"


def test_images_without_a_linux_filesystem_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(MIB))
    with pytest.raises(DriverError, match="neither a filesystem image nor a disk"):
        root_filesystem(DiskSpec(junk, "raw", "vda"))
    with pytest.raises(DriverError, match="no such image file"):
        root_filesystem(DiskSpec(tmp_path / "missing.img", "raw", "vda"))
