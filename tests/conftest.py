"""Fixtures every test folder can use: OpenNebula's own Ruby CLI (``tests/onecli.py``) on a test cloud.

Tests that need upstream files (``hostkit/upstream.py``) fail, when those are absent, with the one message
``UpstreamMissing`` carries: each such test reports one line, and the summary says once how to get them.

This file sits in ``tests/`` (no ``__init__.py``), so pytest puts ``tests/`` on ``sys.path`` and
``import onecli`` works from any test folder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import onecli
import pytest

from hostkit import upstream
from hostkit.paths import CACHE_DIR, UPSTREAM_DIR

UPSTREAM_PREFIX = "needs upstream files: "
FREE_AT_START = pytest.StashKey[dict[str, float]]()


def free_gib() -> dict[str, float]:
    """Free space (GiB) where the tests write most: the temporary folders and the image cache."""
    places = {"temp": Path(tempfile.gettempdir()), "cache": CACHE_DIR}
    return {
        name: shutil.disk_usage(place if place.exists() else place.parent).free / 2**30
        for name, place in places.items()
    }


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[FREE_AT_START] = free_gib()


@pytest.fixture(scope="session")
def one_location(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``ONE_LOCATION`` laid out from ``UPSTREAM_DIR/one`` once per session (per xdist worker)."""
    upstream.path("one", "src", "cli", "onevm")  # UpstreamMissing: the one message saying how to get it
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


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the group into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``-n N --dist loadgroup`` (what ``./run.sh test`` runs) every test that boots guests goes to one
    worker, one after another, as the cloud tests were written to run; the other workers take the rest."""
    for item in items:
        if item.get_closest_marker("cloud") or item.get_closest_marker("image"):
            item.add_marker(pytest.mark.xdist_group("guests"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """A test stopped by UpstreamMissing reports one line (the path it missed) instead of a traceback; the
    summary says how to get them once."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and call.excinfo.errisinstance(upstream.UpstreamMissing):
        wanted = call.excinfo.value.wanted  # type: ignore[attr-defined]
        report.longrepr = f"{UPSTREAM_PREFIX}{wanted} (how to get them: 'upstream files missing' below)"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """The message once, with the number of tests it stopped (reports come from xdist workers too)."""
    stopped = [
        report
        for kind in ("failed", "error")
        for report in terminalreporter.stats.get(kind, [])
        if UPSTREAM_PREFIX in getattr(report, "longreprtext", "")
    ]
    start, end = config.stash.get(FREE_AT_START, {}), free_gib()
    terminalreporter.write_line(
        "disk free (GiB), start -> end: "
        + ", ".join(f"{name} {start.get(name, float('nan')):.1f} -> {end[name]:.1f}" for name in end)
    )
    if stopped:
        terminalreporter.section("upstream files missing")
        terminalreporter.write_line(
            f"{len(stopped)} tests need upstream files that are not here (ONE_UPSTREAM_DIR={UPSTREAM_DIR})."
        )
        terminalreporter.write_line(f"To get them, {upstream.how_to_get()}.")
