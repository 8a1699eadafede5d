"""Disk images from root filesystem trees, and facts about image files.

Used by the local image builder and by the test cloud's drivers.

- :func:`make_ext4_image`: a rootfs directory -> a raw ext4 *filesystem* image (``mkfs.ext4 -d``; no
  loop device, no mount). This is what the container driver boots.
- :func:`make_bootable_qcow2`: a rootfs directory holding a kernel and an initrd -> a bootable qcow2:
  MBR, one ext4 partition labelled ``root`` at 1 MiB, extlinux, serial console. Needs root (a loop
  device maps the partition by byte offset so that extlinux can be installed).
- :func:`image_info` (``qemu-img info --output=json``), :func:`checksums` (sha256 + md5 in one pass),
  :func:`partitions` / :func:`find_root_partition` (``sfdisk --json``), :func:`filesystem_type`
  (superblock magic), :func:`loop_device` (a context manager around ``losetup``).

Every output is written to a temporary name next to the destination and renamed when complete, so a
failed or interrupted build never leaves a half-written image under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hostkit import host
from hostkit.errors import FactoryError

MIB = 1024 * 1024
PARTITION_OFFSET = MIB  # the root partition starts at sector 2048
EXTLINUX_MBR = Path("/usr/lib/EXTLINUX/mbr.bin")
DEFAULT_KERNEL_ARGUMENTS = "root=LABEL=root rw console=ttyS0 net.ifnames=0"


class DiskImageError(FactoryError):
    """Building or inspecting an image failed; the message names the file and the step."""


def _run(argv: list[str], what: str, *, input: bytes | None = None, timeout: float = 1800) -> str:
    """``hostkit.host.run`` with the step named: its HostError becomes a DiskImageError."""
    try:
        return host.run(argv, timeout=timeout, input=input)
    except host.HostError as error:
        raise DiskImageError(f"{what}: {error}") from error


# ---------------------------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    format: str  # "raw", "qcow2", ...
    virtual_size: int  # bytes the guest sees
    actual_size: int  # bytes allocated on the host
    backing_file: str | None


def image_info(path: Path) -> ImageInfo:
    """Format and sizes as ``qemu-img info`` reports them (works on images in use: ``-U``)."""
    path = Path(path)
    if not path.is_file():
        raise DiskImageError(f"{path}: no such image file")
    data = json.loads(_run(["qemu-img", "info", "-U", "--output=json", str(path)], f"{path}: qemu-img info"))
    return ImageInfo(
        path=path,
        format=str(data["format"]),
        virtual_size=int(data["virtual-size"]),
        actual_size=int(data.get("actual-size", 0)),
        backing_file=data.get("backing-filename"),
    )


def checksums(path: Path, chunk_size: int = 4 * MIB) -> dict[str, str]:
    """``{"sha256": ..., "md5": ...}`` of a file, read once."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            sha256.update(chunk)
            md5.update(chunk)
    return {"sha256": sha256.hexdigest(), "md5": md5.hexdigest()}


def sha256_file(path: Path) -> str:
    return checksums(path)["sha256"]


_MAGICS: list[tuple[int, bytes, str]] = [
    (1080, b"\x53\xef", "ext4"),  # ext2/3/4 superblock magic (little-endian 0xEF53)
    (0, b"XFSB", "xfs"),
    (65600, b"_BHRfS_M", "btrfs"),
    (32769, b"CD001", "iso9660"),
]


def filesystem_type(path: Path, offset: int = 0) -> str | None:
    """The filesystem starting at ``offset`` in a raw file, by superblock magic (ext4 covers ext2/3/4)."""
    with open(path, "rb") as stream:
        for position, magic, name in _MAGICS:
            stream.seek(offset + position)
            if stream.read(len(magic)) == magic:
                return name
    return None


def filesystem_label(path: Path, offset: int = 0) -> str | None:
    """Volume label of an ext2/3/4 filesystem at ``offset`` (None for other filesystems)."""
    if filesystem_type(path, offset) != "ext4":
        return None
    with open(path, "rb") as stream:
        stream.seek(offset + 1024 + 120)
        return stream.read(16).split(b"\0", 1)[0].decode(errors="replace") or None


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes from the start of the disk
    size: int  # bytes
    type: str  # MBR type ("83") or GPT type GUID
    name: str  # GPT partition name ("" on MBR)


def partitions(path: Path) -> list[Partition]:
    """Partitions of a raw disk image (MBR or GPT); empty when it has no partition table."""
    completed = subprocess.run(["sfdisk", "--json", str(path)], capture_output=True, text=True)
    if completed.returncode != 0:
        return []
    table = json.loads(completed.stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    found = []
    for entry in table.get("partitions", []):
        number = int(re.sub(r"^.*?(\d+)$", r"\1", entry["node"]))
        found.append(
            Partition(
                number,
                int(entry["start"]) * sector,
                int(entry["size"]) * sector,
                entry["type"],
                entry.get("name", ""),
            )
        )
    return found


def find_root_partition(path: Path) -> Partition:
    """The root filesystem's partition: labelled/named ``root``, else the largest one holding ext4 or xfs."""
    candidates = [part for part in partitions(path) if filesystem_type(path, part.start) in ("ext4", "xfs")]
    if not candidates:
        raise DiskImageError(f"{path}: no partition holds an ext4 or xfs filesystem")
    for part in candidates:
        if part.name == "root" or filesystem_label(path, part.start) == "root":
            return part
    return max(candidates, key=lambda part: part.size)


# ---------------------------------------------------------------------------------------------- loop devices


def attach_loop(path: Path, *, offset: int = 0, size: int | None = None, read_only: bool = False) -> str:
    argv = ["losetup", "--find", "--show"]
    if read_only:
        argv.append("--read-only")
    if offset:
        argv += ["--offset", str(offset)]
    if size is not None:
        argv += ["--sizelimit", str(size)]
    return _run([*argv, str(path)], f"{path}: attach a loop device").strip()


def detach_loop(device: str) -> None:
    subprocess.run(["losetup", "--detach", device], capture_output=True)


def loops_backed_by(path: Path) -> list[str]:
    """Loop devices whose backing file is ``path``."""
    target = str(Path(path).resolve())
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip().removesuffix(" (deleted)") == target:
            found.append("/dev/" + backing.parent.parent.name)
    return found


@contextlib.contextmanager
def loop_device(
    path: Path, *, offset: int = 0, size: int | None = None, read_only: bool = False
) -> Iterator[str]:
    device = attach_loop(path, offset=offset, size=size, read_only=read_only)
    try:
        yield device
    finally:
        detach_loop(device)


@contextlib.contextmanager
def _mounted(device: str, directory: Path) -> Iterator[Path]:
    _run(["mount", device, str(directory)], f"{device}: mount")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], capture_output=True)


# ---------------------------------------------------------------------------------------------- building


def tree_size(root: Path) -> tuple[int, int]:
    """(bytes allocated, number of entries) of a directory tree, not following symlinks."""
    total = 0
    entries = 0
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            entries += 1
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total, entries


def filesystem_size_for(root: Path, headroom: float = 0.3, minimum_free: int = 256 * MIB) -> int:
    """A filesystem size for ``root``: ``headroom`` (a fraction) more, and ``minimum_free`` spare at least."""
    used, entries = tree_size(root)
    wanted = used + max(int(used * headroom), minimum_free) + entries * 256  # inode tables
    return (wanted + MIB - 1) // MIB * MIB


def _partial(destination: Path) -> Path:
    return destination.with_name(f".{destination.name}.partial-{os.getpid()}")


def _mkfs_ext4(root: Path, target: str, label: str, size: int | None, uuid: str | None) -> None:
    _, entries = tree_size(root)
    argv = ["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(root), "-N", str(max(entries * 2, 65536))]
    argv += ["-E", "root_owner=0:0"]
    if uuid:
        argv += ["-U", uuid]
    argv.append(target)
    if size is not None:
        argv.append(str(size // 1024) + "k")
    _run(argv, f"{root}: mkfs.ext4 -d")


def make_ext4_image(
    root: Path, destination: Path, *, size: int | None = None, label: str = "root", uuid: str | None = None
) -> Path:
    """Write directory ``root`` as a raw ext4 filesystem image (default size: the tree plus headroom)."""
    root, destination = Path(root), Path(destination)
    if not root.is_dir():
        raise DiskImageError(f"{root}: not a directory")
    size = size if size is not None else filesystem_size_for(root)
    partial = _partial(destination)
    try:
        with open(partial, "wb") as stream:
            stream.truncate(size)
        _mkfs_ext4(root, str(partial), label, size, uuid)
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def _kernel_and_initrd(root: Path) -> tuple[str, str]:
    def version_key(path: Path) -> list[int]:
        return [int(part) for part in re.findall(r"\d+", path.name)]

    kernels = sorted((root / "boot").glob("vmlinuz-*"), key=version_key)
    if not kernels:
        raise DiskImageError(f"{root}: no /boot/vmlinuz-* (install a kernel package into the rootfs)")
    kernel = kernels[-1]
    initrd = root / "boot" / ("initrd.img-" + kernel.name.removeprefix("vmlinuz-"))
    if not initrd.exists():
        raise DiskImageError(f"{root}: {kernel.name} has no matching {initrd.name}")
    return "/boot/" + kernel.name, "/boot/" + initrd.name


def make_bootable_qcow2(
    root: Path,
    destination: Path,
    *,
    size: int | None = None,
    kernel_arguments: str = DEFAULT_KERNEL_ARGUMENTS,
    compress: bool = True,
) -> Path:
    """Write ``root`` as a bootable qcow2: MBR, one ext4 partition ``root``, extlinux, ``console=ttyS0``.

    The kernel and initrd are the newest ``/boot/vmlinuz-*`` and its ``initrd.img-*`` from the tree. The tree
    itself is not modified; the boot loader configuration is written into the new filesystem only.
    """
    root, destination = Path(root), Path(destination)
    if not EXTLINUX_MBR.exists():
        raise DiskImageError(f"{EXTLINUX_MBR} missing (install the extlinux and syslinux-common packages)")
    kernel, initrd = _kernel_and_initrd(root)
    fs_size = size - PARTITION_OFFSET if size is not None else filesystem_size_for(root)
    disk_size = PARTITION_OFFSET + fs_size
    work = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        disk = work / "disk.raw"
        with open(disk, "wb") as stream:
            stream.truncate(disk_size)
        layout = f"label: dos\nstart={PARTITION_OFFSET // 512}, type=83, bootable\n"
        _run(["sfdisk", "--quiet", str(disk)], f"{disk}: partition", input=layout.encode())
        with loop_device(disk, offset=PARTITION_OFFSET, size=fs_size) as device:
            # extlinux 6.04 cannot read ext4's 64bit feature: leave it off (fine below 16 TiB).
            mkfs = ["mkfs.ext4", "-q", "-F", "-L", "root", "-O", "^64bit", "-E", "root_owner=0:0"]
            _run([*mkfs, "-d", str(root), device], f"{root}: mkfs.ext4 -d")
            mount_point = work / "mnt"
            mount_point.mkdir()
            with _mounted(device, mount_point):
                config_dir = mount_point / "boot" / "extlinux"
                config_dir.mkdir(parents=True, exist_ok=True)
                (config_dir / "extlinux.conf").write_text(
                    "DEFAULT linux\nTIMEOUT 1\nPROMPT 0\nSERIAL 0 115200\n"
                    f"LABEL linux\n  KERNEL {kernel}\n  INITRD {initrd}\n  APPEND {kernel_arguments}\n"
                )
                _run(["extlinux", "--install", str(config_dir)], f"{disk}: extlinux --install")
        with open(disk, "r+b") as stream:
            stream.write(EXTLINUX_MBR.read_bytes()[:440])
        partial = _partial(destination)
        argv = ["qemu-img", "convert", "-O", "qcow2", *(["-c"] if compress else []), str(disk), str(partial)]
        try:
            _run(argv, f"{destination}: qemu-img convert")
            os.replace(partial, destination)
        finally:
            partial.unlink(missing_ok=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return destination


def convert(source: Path, destination: Path, output_format: str, *, compress: bool = False) -> Path:
    """``qemu-img convert`` to ``output_format`` (``raw`` or ``qcow2``), atomically."""
    partial = _partial(Path(destination))
    argv = [
        "qemu-img",
        "convert",
        "-U",
        "-O",
        output_format,
        *(["-c"] if compress else []),
        str(source),
        str(partial),
    ]
    try:
        _run(argv, f"{source}: qemu-img convert to {output_format}")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return Path(destination)
