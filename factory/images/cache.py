"""Garbage collection of the local image cache (``$FLOWER_FACTORY_CACHE/images``).

Every build makes new content-addressed entries and none is ever removed, so a cache that lives across
changes fills up with stale layers and appliance images. ``plan_prune`` lists what the current matrix's
images no longer reach; ``prune`` removes it. What a build may be using is never removed:

- an entry the current matrix reaches (``wanted_entries``: the base, the base qcow2, each locally buildable
  variant's system and runtime layers, its appliance image and, once the base qcow2 exists, its qcow2);
- an entry whose lock (``.<name>.lock`` beside it, the one ``localbuild._cache_entry`` holds while it fills
  the entry) is held now; the lock is taken, without waiting, for the removal itself;
- an entry changed less than ``min_age`` seconds ago (a build of another checkout sharing the cache, whose
  keys this checkout does not know, or a build about to start from it);
- a work directory (``work/<name>-<pid>-<ns>``) whose process still runs.
"""

from __future__ import annotations

import enum
import fcntl
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from factory.images import localbuild
from factory.images.layers import plan_layers
from factory.model.matrix import Variant
from hostkit import onecontext
from hostkit.errors import ConfigError


class Area(enum.StrEnum):
    """The folders of the image cache, each holding one entry per key."""

    BASE = "base"
    BASE_QCOW2 = "base-qcow2"
    LAYERS = "layers"
    APPLIANCES = "appliances"
    QCOW2 = "qcow2"
    WORK = "work"


class Verdict(enum.StrEnum):
    REMOVE = "remove"
    WANTED = "wanted"  # reached from the current matrix
    RECENT = "recent"  # changed less than min_age ago
    LOCKED = "locked"  # a build holds its lock
    RUNNING = "running"  # a work directory of a running process


@dataclass(frozen=True)
class Entry:
    area: Area
    path: Path
    size: int
    verdict: Verdict


def locally_buildable(variants: Iterable[Variant]) -> list[Variant]:
    """The variants the local builder makes (debian12, local base, x86_64 CPU): the cache's images."""
    buildable = []
    for variant in variants:
        try:
            localbuild.check_buildable(variant)
        except ConfigError:
            continue
        buildable.append(variant)
    return buildable


def _one_context_identity() -> onecontext.OneContextPackage:
    """The one-context package's identity (what the keys use) without building it."""
    reason = onecontext.missing_reason()
    if reason is not None:
        raise ConfigError("cache", "one-context", reason)
    source = onecontext.source_dir()
    version = f"{onecontext.PACKAGE_VERSION}-{onecontext.PACKAGE_RELEASE}"
    digest = onecontext._tree_digest(source)  # the digest of the package's key
    return onecontext.OneContextPackage(Path(), version, onecontext.pinned_commit(), source, digest)


def wanted_entries(variants: Iterable[Variant]) -> set[Path]:
    """The cache entries the images of ``variants`` (the locally buildable ones) are made of, built or not."""
    from factory.model import params as params_module

    buildable = locally_buildable(variants)
    base = localbuild.base_rootfs()
    package = _one_context_identity()
    wanted = {base.directory}
    base_qcow2 = localbuild.base_qcow2_directory(base, package)
    wanted.add(base_qcow2)
    checksum_file = base_qcow2 / f"{localbuild.LOCAL_OS}-base.qcow2.sha256"
    base_sha256 = checksum_file.read_text().split()[0] if checksum_file.exists() else None
    parts = [package.commit, package.source_digest, package.version]
    params_text = {role: params_module.guest_defaults(role) for role in {v.role for v in buildable}}
    for variant in buildable:
        environment = variant.provision_env(payload=localbuild.GUEST_PAYLOAD, build_target="chroot")
        layers = plan_layers(
            environment, base.key, localbuild.PROVISION_DIR, parts, localbuild.BUILDER_VERSION
        )
        wanted.update(localbuild.layer_directory(layer) for layer in layers)
        key = localbuild.appliance_key(variant, base, params_text[variant.role], package)
        wanted.add(localbuild.appliance_directory(variant, key))
        if base_sha256 is not None:
            wanted.add(localbuild.qcow2_directory(variant, localbuild.qcow2_key(key, base_sha256)))
    return wanted


def _blocks(path: Path) -> int:
    return path.lstat().st_blocks * 512


def tree_size(path: Path) -> int:
    """Bytes a tree takes on disk (allocated blocks: a sparse image counts what it holds; links not
    followed, other filesystems not entered)."""
    if path.is_symlink() or not path.is_dir():
        return _blocks(path) if path.exists() or path.is_symlink() else 0
    device = path.stat().st_dev
    total = 0
    for root, directories, files in os.walk(path):
        for name in files:
            try:
                total += _blocks(Path(root) / name)
            except OSError:
                continue
        directories[:] = [name for name in directories if (Path(root) / name).lstat().st_dev == device]
    return total


def changed_at(path: Path) -> float:
    """When the entry last changed: its own mtime or its completion marker's, whichever is newer."""
    times = [path.lstat().st_mtime]
    marker = path / ".complete"
    if marker.exists():
        times.append(marker.stat().st_mtime)
    return max(times)


def lock_path(entry: Path) -> Path:
    return entry.with_name(f".{entry.name}.lock")


@contextmanager
def held_lock(entry: Path) -> Iterator[bool]:
    """Take the entry's build lock without waiting: True while held here, False when a build holds it."""
    path = lock_path(entry)
    if not path.exists():
        yield True
        return
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def _process_runs(work: Path) -> bool:
    """A work directory is ``<name>-<pid>-<monotonic ns>``: does that process still run?"""
    parts = work.name.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _entries(cache: Path) -> Iterator[tuple[Area, Path]]:
    for area in Area:
        folder = cache / area.value
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if not path.name.startswith("."):
                yield area, path


def check_root(cache: Path) -> None:
    """Refuse an image cache root that is not a directory (ConfigError naming it)."""
    if not cache.is_dir():
        raise ConfigError("cache", str(cache), "is not a directory (set FLOWER_FACTORY_CACHE)")


def plan_prune(cache: Path, wanted: set[Path], min_age: float, now: float | None = None) -> list[Entry]:
    """Every entry of ``cache`` with its verdict (no lock is taken here; ``prune`` checks again)."""
    if min_age < 0:
        raise ConfigError("command line", "--min-age", f"must not be negative, got {min_age:g}")
    check_root(cache)
    now = time.time() if now is None else now
    entries = []
    for area, path in _entries(cache):
        if path in wanted:
            verdict = Verdict.WANTED
        elif area is Area.WORK and _process_runs(path):
            verdict = Verdict.RUNNING
        elif now - changed_at(path) < min_age:
            verdict = Verdict.RECENT
        else:
            with held_lock(path) as free:
                verdict = Verdict.REMOVE if free else Verdict.LOCKED
        entries.append(Entry(area, path, tree_size(path), verdict))
    return entries


def remove_entry(entry: Entry) -> Verdict:
    """Remove one entry under its lock (taken without waiting). LOCKED when a build took it meanwhile."""
    with held_lock(entry.path) as free:
        if not free:
            return Verdict.LOCKED
        # The lock file stays (empty): unlinking it while held would let a builder lock a file nobody
        # else sees any more.
        localbuild._remove_tree(entry.path)  # the cache's one way to remove a tree
    return Verdict.REMOVE


def prune(cache: Path, wanted: set[Path], min_age: float, dry_run: bool) -> list[Entry]:
    """Remove (unless ``dry_run``) the entries ``plan_prune`` finds unreachable, old and unlocked; returns
    every entry with what was done to it (an entry a build locked in between is kept, ``LOCKED``)."""
    done = []
    for entry in plan_prune(cache, wanted, min_age):
        if entry.verdict is Verdict.REMOVE and not dry_run:
            entry = Entry(entry.area, entry.path, entry.size, remove_entry(entry))
        done.append(entry)
    return done
