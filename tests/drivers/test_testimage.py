"""The tiny test image: what is in it (read with debugfs, no mount), its manifest, its cache key."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from factory import diskimage
from testcloud import testimage


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True).stdout


def test_the_manifest_matches_the_image(test_image: Path) -> None:
    manifest = testimage.manifest(test_image)
    assert manifest["sha256"] == diskimage.sha256_file(test_image), "nothing ever wrote to the cached image"
    assert manifest["format"] == "raw" and manifest["virtual_size"] == test_image.stat().st_size
    assert manifest["os_release"]["ID"] == "debian" and manifest["os_release"]["VERSION_ID"] == "12"
    assert manifest["one_context"] == "lite"


def test_the_image_carries_one_context_lite_and_no_host_leftovers(test_image: Path) -> None:
    source = (testimage.ONE_CONTEXT_LITE / "usr" / "sbin" / "one-contextd").read_text()
    assert _debugfs(test_image, "cat /usr/sbin/one-contextd") == source
    wants = _debugfs(test_image, "ls -l /etc/systemd/system/multi-user.target.wants")
    for unit in ("one-context-local.service", "one-context.service", "one-context-reconfigure.path"):
        assert unit in wants
    assert "ssh_host_" not in _debugfs(test_image, "ls /etc/ssh"), "host keys are made at first boot"
    assert _debugfs(test_image, "cat /etc/hostname") == "localhost\n"
    assert _debugfs(test_image, "cat /etc/resolv.conf") == ""
    assert 'Fast link dest: "/dev/null"' in _debugfs(test_image, "stat /etc/systemd/system/apt-daily.timer")


def test_the_cache_key_follows_the_agent_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = tmp_path / "context" / "one-context-lite"
    shutil.copytree(testimage.ONE_CONTEXT_LITE, copy)
    monkeypatch.setattr(testimage, "ONE_CONTEXT_LITE", copy)
    key = testimage.build_key(bootable=False)
    assert testimage.build_key(bootable=False) == key
    assert testimage.build_key(bootable=True) != key
    script = copy / "etc" / "one-context.d" / "loc-10-network"
    script.write_text(script.read_text() + "# changed\n")
    assert testimage.build_key(bootable=False) != key
