"""Where the root filesystem of a disk image lies, for the container driver's read-only loop mount.

Accepted: a raw filesystem image (ext4 or xfs at byte 0), a partitioned raw disk (the ``root``
partition, else the largest ext4/xfs one) and qcow2 (or any format qemu-img reads), converted once to
raw in a cache keyed by the image's sha256 so that every later boot of the same content is instant.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from hostkit import diskimage
from hostkit.paths import CACHE_DIR
from testcloud.drivers.base import DiskSpec
from testcloud.drivers.errors import DriverError

RAW_CACHE_DIR = CACHE_DIR / "testcloud" / "raw"
MOUNTABLE = ("ext4", "xfs")


@dataclass(frozen=True)
class RootFilesystem:
    path: Path  # a raw file (the datastore image itself, or its cached raw conversion)
    offset: int  # byte offset of the filesystem in it
    size: int | None  # bytes, None = to the end of the file
    fstype: str  # "ext4" (ext2/3/4) or "xfs"


def content_sha256(path: Path, cache_dir: Path) -> str:
    """sha256 of an image, remembered per (device, inode, size, mtime) so unchanged files are hashed once."""
    status = path.stat()
    memo = cache_dir / "sha256" / f"{status.st_dev}-{status.st_ino}-{status.st_size}-{status.st_mtime_ns}"
    try:
        return memo.read_text().strip()
    except FileNotFoundError:
        pass
    digest = diskimage.sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    temporary = memo.with_name(f".{memo.name}.{os.getpid()}")
    temporary.write_text(digest + "\n")
    os.replace(temporary, memo)
    return digest


def raw_copy(path: Path, cache_dir: Path | None = None) -> Path:
    """The image converted to raw, made once per content (locked, so parallel boots convert it once)."""
    cache_dir = cache_dir if cache_dir is not None else RAW_CACHE_DIR
    cache_dir.mkdir(parents=True, exist_ok=True)
    raw = cache_dir / f"{content_sha256(path, cache_dir)}.raw"
    if raw.exists():
        return raw
    with open(cache_dir / f".{raw.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not raw.exists():
            diskimage.convert(path, raw, "raw")
    return raw


def root_filesystem(disk: DiskSpec, cache_dir: Path | None = None) -> RootFilesystem:
    """Locate the root filesystem of ``disk``; DriverError naming the image when there is none to mount."""
    image = Path(disk.image_path)
    try:
        info = diskimage.image_info(image)
    except diskimage.DiskImageError as error:
        raise DriverError(f"disk {disk.target}: {error}") from error
    source = image if info.format == "raw" else raw_copy(image, cache_dir)
    fstype = diskimage.filesystem_type(source)
    if fstype in MOUNTABLE:
        return RootFilesystem(source, 0, None, fstype)
    if fstype is not None:
        raise DriverError(
            f"{image}: holds a {fstype} filesystem; the container driver mounts only ext4 or xfs"
        )
    try:
        partition = diskimage.find_root_partition(source)
    except diskimage.DiskImageError as error:
        raise DriverError(
            f"{image}: neither a filesystem image nor a disk with a root partition ({error})"
        ) from error
    return RootFilesystem(
        source, partition.start, partition.size, str(diskimage.filesystem_type(source, partition.start))
    )
