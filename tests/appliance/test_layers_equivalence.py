"""An image built through layers holds the same files as one built straight from the base.

Builds the smallest variant (the numpy edge SuperNode) twice: through its cached system and runtime layers,
then straight (every provisioning step on a copy of the base), mounts both raw ext4 images read-only and
compares their trees: every path, its type, mode, owner, group, symlink target and content digest.

Left out of the comparison, because they differ between any two builds of the same inputs (found by this
test: these and nothing else differed):
- modification times (of every file and directory);
- the source-mtime field of compiled Python files (``.pyc`` bytes 8-11 of a timestamp-based pyc, PEP 552):
  pip compiles at install time, so that field is the install time;
- ``/var/cache/ldconfig/aux-cache``: ldconfig's cache of the inode numbers and change times of the
  libraries it scanned;
- the name of the backup one-context's package makes of ``/etc/network/interfaces``: it ends in the
  epoch second of the build (compared as ``interfaces.<epoch>``, content included);
- the initramfs archive's own bytes (its cpio headers hold mtimes): it is unpacked with the image's own
  ``unmkinitramfs`` and its files are compared like the image's.

Needs root, systemd-nspawn, mmdebstrap or a cached base, the pinned one-context source (FLOWER_FACTORY_SHARED)
and a PyPI: minutes of both cores, so opt-in (``-m image``). Set FLOWER_FACTORY_CACHE to a cache that holds
the base to skip mmdebstrap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from factory.images import localbuild
from factory.images.timings import BuildTimings, EntryKind, Outcome
from factory.model.matrix import load_matrix
from hostkit import diskimage, onecontext

pytestmark = pytest.mark.image

SMALLEST = "supernode-1.42.0-debian12-cpu-edge-numpy-x86_64"
PER_BUILD_FILES = {"/var/cache/ldconfig/aux-cache"}
PER_BUILD_NAMES = ((re.compile(r"^(/etc/network/interfaces\.)\d{9,11}$"), r"\1<epoch>"),)
INITRD = re.compile(r"^/boot/initrd\.img-[^/]+$")


def _pyc_without_mtime(data: bytes) -> bytes:
    flags = int.from_bytes(data[4:8], "little") if len(data) >= 16 else 1
    return data if flags & 1 else data[:8] + data[12:]


def tree_record(root: Path) -> dict[str, tuple[object, ...]]:
    """path -> (type, permission bits, uid, gid, link target or content digest) of everything under root,
    the per-build names normalized and the per-build files left out."""
    record: dict[str, tuple[object, ...]] = {}
    for directory, names, files in os.walk(root):
        for name in [*names, *files]:
            path = Path(directory) / name
            info = path.lstat()
            relative = "/" + path.relative_to(root).as_posix()
            if relative in PER_BUILD_FILES:
                continue
            for pattern, replacement in PER_BUILD_NAMES:
                relative = pattern.sub(replacement, relative)
            if stat.S_ISLNK(info.st_mode):
                what: object = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                data = path.read_bytes()
                data = _pyc_without_mtime(data) if name.endswith(".pyc") else data
                what = hashlib.sha256(data).hexdigest()
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                what = info.st_rdev
            else:
                what = ""
            record[relative] = (
                stat.S_IFMT(info.st_mode),
                stat.S_IMODE(info.st_mode),
                info.st_uid,
                info.st_gid,
                what,
            )
    return record


def initrd_record(root: Path, initrd: str, scratch: Path) -> str:
    """A digest of the files in the image's initramfs, unpacked by the image's own unmkinitramfs."""
    scratch.mkdir(parents=True)
    argv = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--as-pid2",
        f"--machine=fl-layers-cmp-{os.getpid()}",
        "--read-only",
        f"--directory={root}",
        f"--bind={scratch}:/mnt",
        "unmkinitramfs",
        initrd,
        "/mnt/initrd",
    ]
    subprocess.run(argv, check=True, capture_output=True)
    record = tree_record(scratch / "initrd")
    assert len(record) > 100, f"{initrd}: unpacked into only {len(record)} files"
    return hashlib.sha256(json.dumps(sorted(record.items())).encode()).hexdigest()


def image_record(image: Path, scratch: Path) -> dict[str, tuple[object, ...]]:
    with mounted(image, scratch / "root") as root:
        record = tree_record(root)
        for path in [path for path in record if INITRD.match(path)]:
            record[path] = (*record[path][:4], initrd_record(root, path, scratch / "initrd"))
    return record


@contextlib.contextmanager
def mounted(image: Path, directory: Path) -> Iterator[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop,ro,noload", str(image), str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=False)


def _differences(first: dict[str, tuple[object, ...]], second: dict[str, tuple[object, ...]]) -> list[str]:
    lines = [f"only layered: {path}" for path in sorted(first.keys() - second.keys())]
    lines += [f"only straight: {path}" for path in sorted(second.keys() - first.keys())]
    lines += [
        f"differs: {path}: {first[path]} != {second[path]}"
        for path in sorted(first.keys() & second.keys())
        if first[path] != second[path]
    ]
    return lines


def test_an_image_built_through_layers_has_the_files_of_one_built_straight(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("builds images with systemd-nspawn and mounts them: needs root")
    reason = onecontext.missing_reason()
    if reason is not None:
        pytest.skip(reason)
    variant = load_matrix().variant(SMALLEST)
    timings = BuildTimings()

    started = time.monotonic()
    layered = localbuild.build_appliance(variant, force=True, timings=timings)  # its layers rebuilt too
    wall = time.monotonic() - started
    assert not layered.reused and set(layered.manifest["build"]["layers"]) == {"system", "runtime"}
    through_layers = image_record(layered.image, tmp_path / "layered")
    assert [entry.kind for entry in timings.entries].count(EntryKind.LAYER) == 2
    # every entry counts its own work once: the image's time leaves out the layers built for it
    assert all(entry.outcome == Outcome.BUILT for entry in timings.entries if entry.kind != EntryKind.BASE)
    assert timings.seconds(Outcome.BUILT) <= wall + 0.5, timings.breakdown()

    again = localbuild.build_appliance(variant, timings=timings)  # nothing changed: a cache hit
    assert again.reused and timings.entries[-1].outcome == Outcome.REUSED
    assert again.manifest["sha256"] == layered.manifest["sha256"]

    straight = localbuild.build_appliance(variant, force=True, layered=False, timings=timings)
    assert not straight.reused and straight.manifest["build"]["layers"] == {}
    assert straight.manifest["sha256"] == diskimage.sha256_file(straight.image)
    without_layers = image_record(straight.image, tmp_path / "straight")

    assert len(through_layers) > 10_000  # a whole Debian system with a virtualenv, not an empty mount
    assert any(INITRD.match(path) for path in through_layers)
    differences = _differences(through_layers, without_layers)
    assert not differences, "\n".join(differences[:200])
    # the two builds' manifests describe the same variant and the same installed components
    for field in ("variant", "os", "facts"):
        if field in layered.manifest:
            assert layered.manifest[field] == straight.manifest[field], field
