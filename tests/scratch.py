"""Scratch folders for the tests' test clouds, removed when the fixture ends.

A test cloud's state holds copies of what it was given: every image in its datastores, every app in its
marketplace, a disk per guest (``testcloud/core/images.py`` copies as OpenNebula's ``fs`` datastore
does). With appliance images of about 1 GiB each, one module's cloud holds several GiB, and pytest keeps every
``tmp_path_factory`` folder until the session ends: a fresh CI machine ran out of disk that way, after which
every ``one.image.allocate`` answered "Not enough space in datastore". So the fixtures that boot clouds with
appliance images take their folder from ``scratch_dir`` and give it back when they stop.

``FLOWER_KEEP_TEST_CLOUDS=1`` keeps them, to look at a cloud after the run. A folder that still has something
mounted under it (a guest that did not stop) is never removed: removing it would follow the mount.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hostkit.host import mounts_under

KEEP_SETTING = "FLOWER_KEEP_TEST_CLOUDS"


def remove_scratch(path: Path) -> None:
    """Remove ``path`` unless it is to be kept or something is still mounted below it (then say so)."""
    if os.environ.get(KEEP_SETTING) == "1":
        return
    mounted = mounts_under(path)
    if mounted:
        print(f"kept {path}: still mounted below it: {', '.join(map(str, mounted))}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def scratch_dir(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A new folder from ``factory`` for the length of the ``with`` block, removed after it."""
    path = factory.mktemp(name)
    try:
        yield path
    finally:
        remove_scratch(path)
