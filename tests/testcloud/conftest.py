"""Fixtures for the test cloud's fidelity tests: a cloud with the dummy driver, and pyone on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyone
import pytest
from cloudtest_helpers import FAST, SLOW

from testcloud import launcher


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[launcher.CloudHandle]:
    handle = launcher.start(tmp_path / "cloud", driver="dummy", timings=FAST)
    yield handle
    handle.stop()


@pytest.fixture
def slow_cloud(tmp_path: Path) -> Iterator[launcher.CloudHandle]:
    """Transient states that last long enough to be seen by polling."""
    handle = launcher.start(tmp_path / "cloud", driver="dummy", timings=SLOW)
    yield handle
    handle.stop()


@pytest.fixture
def one(cloud: launcher.CloudHandle) -> Any:
    return pyone.OneServer(cloud.endpoints["xmlrpc"], session=cloud.auth)
