"""tests/scratch.py: the clouds' scratch folders go when their fixture ends, never through a mount; and
hostkit.host.stop_process, what the test and benchmark helpers stop their child processes with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from scratch import remove_scratch, scratch_dir

from hostkit.host import mounts_under, stop_process


def test_a_scratch_dir_is_removed_after_the_block(tmp_path_factory: pytest.TempPathFactory) -> None:
    with scratch_dir(tmp_path_factory, "cloud") as state:
        (state / "datastores" / "1").mkdir(parents=True)
        (state / "datastores" / "1" / "disk").write_bytes(b"x" * 4096)
    assert not state.exists()


def test_kept_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_KEEP_TEST_CLOUDS", "1")
    (tmp_path / "cloud").mkdir()
    remove_scratch(tmp_path / "cloud")
    assert (tmp_path / "cloud").is_dir()


def test_a_mount_below_keeps_the_folder_and_what_it_shows(tmp_path: Path) -> None:
    """A guest left mounted: removing the folder would delete the mounted tree's files through the mount."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    state = tmp_path / "cloud"
    point = state / "vms" / "0" / "rootfs"
    point.mkdir(parents=True)
    done = subprocess.run(["mount", "--bind", str(outside), str(point)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"mount --bind needs root (as the cloud tests do): {done.stderr.strip()}")
    try:
        assert mounts_under(state) == [point]
        remove_scratch(state)
        assert (point / "precious").read_text() == "keep me"
    finally:
        subprocess.run(["umount", str(point)], check=True)
    assert mounts_under(state) == []
    remove_scratch(state)
    assert not state.exists() and (outside / "precious").is_file()


def test_stop_process_ends_a_child_that_ignores_sigterm() -> None:
    """hostkit.host.stop_process (the exporter helpers and the metrics benchmark stop with it): SIGTERM, then
    SIGKILL after the grace period; a child that already ended is left alone."""
    stubborn = subprocess.Popen(["bash", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done"],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "up\n"
    stop_process(stubborn, grace=0.5)
    assert stubborn.returncode == -9
    polite = subprocess.Popen(["sleep", "30"])
    stop_process(polite)
    assert polite.returncode == -15
    stop_process(polite)  # ended already: nothing to do
