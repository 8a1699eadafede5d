"""hostkit.diskimage: filesystem images, bootable qcow2, partitions, checksums (real mkfs/sfdisk/qemu-img)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from hostkit import diskimage
from hostkit.diskimage import MIB


def _debugfs(device: str | Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(device)], capture_output=True, text=True).stdout


def test_ext4_image_holds_the_tree_with_modes_and_links(tree: Path, tmp_path: Path) -> None:
    image = diskimage.make_ext4_image(tree, tmp_path / "fs.img")
    assert diskimage.filesystem_type(image) == "ext4"
    assert diskimage.filesystem_label(image) == "root"
    info = diskimage.image_info(image)
    assert info.format == "raw" and info.virtual_size == image.stat().st_size
    assert info.virtual_size >= 256 * MIB, "default size leaves headroom"
    assert _debugfs(image, "cat /etc/hello") == "hello from the tree\n"
    assert "Mode:  0600" in _debugfs(image, "stat /etc/secret")
    assert 'Fast link dest: "tool"' in _debugfs(image, "stat /bin/link")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["fs.img", "tree"], "no partial file left"


def test_a_too_small_image_fails_cleanly(tree: Path, tmp_path: Path) -> None:
    (tree / "big").write_bytes(os.urandom(3 * MIB))
    with pytest.raises(diskimage.DiskImageError, match=r"mkfs\.ext4"):
        diskimage.make_ext4_image(tree, tmp_path / "small.img", size=2 * MIB)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tree"]
    with pytest.raises(diskimage.DiskImageError, match="not a directory"):
        diskimage.make_ext4_image(tmp_path / "missing", tmp_path / "x.img")


def test_checksums_match_hashlib(tmp_path: Path) -> None:
    data = os.urandom(5 * MIB + 123)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert diskimage.checksums(path) == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
    }
    assert diskimage.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_image_info_reports_qcow2_and_refuses_missing_files(tree: Path, tmp_path: Path) -> None:
    raw = diskimage.make_ext4_image(tree, tmp_path / "fs.img")
    qcow2 = diskimage.convert(raw, tmp_path / "fs.qcow2", "qcow2", compress=True)
    info = diskimage.image_info(qcow2)
    assert info.format == "qcow2" and info.virtual_size == raw.stat().st_size
    back = diskimage.convert(qcow2, tmp_path / "back.raw", "raw")
    assert diskimage.sha256_file(back) == diskimage.sha256_file(raw)
    with pytest.raises(diskimage.DiskImageError, match="no such image file"):
        diskimage.image_info(tmp_path / "nope.qcow2")


def _partitioned_disk(tmp_path: Path, filesystem: Path, label_root: bool) -> Path:
    disk = tmp_path / "disk.raw"
    fs_size = filesystem.stat().st_size
    with open(disk, "wb") as stream:
        stream.truncate(2 * MIB + 8 * MIB + fs_size)
    layout = f"label: dos\nstart=2048, size={8 * MIB // 512}, type=83\nstart={10 * MIB // 512}, type=83\n"
    subprocess.run(["sfdisk", "--quiet", str(disk)], input=layout.encode(), check=True)
    little = tmp_path / "little.img"
    with open(little, "wb") as stream:
        stream.truncate(8 * MIB)
    subprocess.run(["mkfs.ext4", "-q", "-L", "boot" if label_root else "other", str(little)], check=True)
    for source, offset in ((little, MIB), (filesystem, 10 * MIB)):
        subprocess.run(
            ["dd", f"if={source}", f"of={disk}", "bs=1M", f"seek={offset // MIB}", "conv=notrunc,sparse"],
            check=True,
            capture_output=True,
        )
    return disk


def test_the_root_partition_is_found_by_label(tree: Path, tmp_path: Path) -> None:
    filesystem = diskimage.make_ext4_image(tree, tmp_path / "fs.img", size=64 * MIB)
    disk = _partitioned_disk(tmp_path, filesystem, label_root=True)
    parts = diskimage.partitions(disk)
    assert [(part.number, part.start) for part in parts] == [(1, MIB), (2, 10 * MIB)]
    root = diskimage.find_root_partition(disk)
    assert root.number == 2 and root.size == 64 * MIB
    assert diskimage.filesystem_label(disk, root.start) == "root"
    assert diskimage.partitions(filesystem) == [], "a filesystem image has no partition table"


def test_without_a_root_label_the_largest_linux_filesystem_wins(tree: Path, tmp_path: Path) -> None:
    filesystem = diskimage.make_ext4_image(tree, tmp_path / "fs.img", size=64 * MIB, label="data")
    disk = _partitioned_disk(tmp_path, filesystem, label_root=False)
    assert diskimage.find_root_partition(disk).start == 10 * MIB
    empty = tmp_path / "empty.raw"
    with open(empty, "wb") as stream:
        stream.truncate(16 * MIB)
    with pytest.raises(diskimage.DiskImageError, match="no partition"):
        diskimage.find_root_partition(empty)


def test_bootable_qcow2_has_mbr_extlinux_and_the_kernel(tree: Path, tmp_path: Path) -> None:
    (tree / "boot").mkdir()
    (tree / "boot" / "vmlinuz-6.1.0-9-cloud-amd64").write_bytes(b"old kernel")
    (tree / "boot" / "initrd.img-6.1.0-9-cloud-amd64").write_bytes(b"old initrd")
    (tree / "boot" / "vmlinuz-6.1.0-28-cloud-amd64").write_bytes(b"kernel")
    (tree / "boot" / "initrd.img-6.1.0-28-cloud-amd64").write_bytes(b"initrd")
    qcow2 = diskimage.make_bootable_qcow2(tree, tmp_path / "boot.qcow2")
    assert diskimage.image_info(qcow2).format == "qcow2"
    raw = diskimage.convert(qcow2, tmp_path / "boot.raw", "raw")
    assert raw.read_bytes()[:440] == diskimage.EXTLINUX_MBR.read_bytes()[:440]
    (root,) = diskimage.partitions(raw)
    assert root.start == diskimage.PARTITION_OFFSET and root.type == "83"
    assert diskimage.filesystem_label(raw, root.start) == "root"
    with diskimage.loop_device(raw, offset=root.start, size=root.size, read_only=True) as device:
        config = _debugfs(device, "cat /boot/extlinux/extlinux.conf")
        loader = _debugfs(device, "stat /boot/extlinux/ldlinux.sys")
        hello = _debugfs(device, "cat /etc/hello")
    assert "KERNEL /boot/vmlinuz-6.1.0-28-cloud-amd64" in config, "the newest kernel by version"
    assert "INITRD /boot/initrd.img-6.1.0-28-cloud-amd64" in config
    assert "APPEND root=LABEL=root rw console=ttyS0" in config
    assert "Inode:" in loader
    assert hello == "hello from the tree\n"
    assert not (tree / "boot" / "extlinux").exists(), "the source tree is not modified"
    assert diskimage.loops_backed_by(raw) == []


def test_bootable_qcow2_needs_a_kernel(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(diskimage.DiskImageError, match="vmlinuz"):
        diskimage.make_bootable_qcow2(tree, tmp_path / "boot.qcow2")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tree"]
