"""Fixtures every test folder can use: OpenNebula's own Ruby CLI (``tests/onecli.py``) on a test cloud.

This file sits in ``tests/`` (no ``__init__.py``), so pytest puts ``tests/`` on ``sys.path`` and
``import onecli`` works from any test folder.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import onecli
import pytest


@pytest.fixture(scope="session")
def one_location(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ONE_LOCATION`` laid out from ``SHARED_DIR/upstream/one`` once per session (per xdist worker)."""
    reason = onecli.cli_available()
    if reason:
        pytest.skip(reason)
    if shutil.which("ruby") is None:  # a missing piece of the set-up, not a reason to skip
        pytest.fail("ruby is not installed: run scripts/setup.sh (it installs ruby and the CLI's gems)")
    return onecli.build_one_location(tmp_path_factory.mktemp("one") / "one")


@pytest.fixture
def make_one_cli(one_location: Path, tmp_path: Path) -> Callable[[Mapping[str, str]], onecli.OneCli]:
    """``make_one_cli(handle.endpoints)``: the CLI pointed at a running test cloud."""
    count = iter(range(1000))

    def make(endpoints: Mapping[str, str]) -> onecli.OneCli:
        return onecli.one_cli(one_location, tmp_path / f"onecli-{next(count)}", endpoints)

    return make
