"""The tiny test image: what is in it (read with debugfs, no mount), its manifest, its cache key."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

from hostkit import diskimage, onecontext
from testcloud.drivers import testimage


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True).stdout


def test_the_manifest_matches_the_image(test_image: Path) -> None:
    manifest = testimage.manifest(test_image)
    assert manifest["sha256"] == diskimage.sha256_file(test_image), "nothing ever wrote to the cached image"
    assert manifest["format"] == "raw" and manifest["virtual_size"] == test_image.stat().st_size
    assert manifest["os_release"]["ID"] == "debian" and manifest["os_release"]["VERSION_ID"] == "12"
    assert manifest["one_context"]["commit"] == onecontext.SOURCE_COMMIT
    assert manifest["one_context"]["version"] == f"{onecontext.PACKAGE_VERSION}-{onecontext.PACKAGE_RELEASE}"


def test_the_image_carries_one_context_from_source_and_no_host_leftovers(test_image: Path) -> None:
    upstream = onecontext.source_dir() / "src" / "usr" / "sbin" / "one-contextd"
    assert _debugfs(test_image, "cat /usr/sbin/one-contextd") == upstream.read_text()
    status = _debugfs(test_image, "cat /var/lib/dpkg/status")
    entry = status[status.index("Package: one-context\n") :].split("\n\n")[0]
    assert "Status: install ok installed" in entry
    # The package's postinst enabled its units; networkd is enabled without its D-Bus activation alias.
    wants = _debugfs(test_image, "ls -l /etc/systemd/system/multi-user.target.wants")
    for unit in (
        "one-context-local.service",
        "one-context-online.service",
        "one-context.service",
        "systemd-networkd.service",
    ):
        assert unit in wants, unit
    assert "dbus-org.freedesktop.network1.service" not in _debugfs(test_image, "ls -l /etc/systemd/system")
    assert "ssh_host_" not in _debugfs(test_image, "ls /etc/ssh"), "host keys are made at first boot"
    assert _debugfs(test_image, "cat /etc/hostname") == "localhost\n"
    assert _debugfs(test_image, "cat /etc/resolv.conf") == ""
    assert 'Fast link dest: "/dev/null"' in _debugfs(test_image, "stat /etc/systemd/system/apt-daily.timer")


def test_the_cache_key_follows_the_one_context_source() -> None:
    package = onecontext.OneContextPackage(Path("/nonexistent.deb"), "1-1", "a" * 40, Path("/src"), "d1")
    key = testimage.build_key(bootable=False, package=package)
    assert testimage.build_key(bootable=False, package=package) == key
    assert testimage.build_key(bootable=True, package=package) != key
    for change in ({"source_digest": "d2"}, {"commit": "b" * 40}, {"version": "1-2"}):
        changed = dataclasses.replace(package, **change)
        assert testimage.build_key(bootable=False, package=changed) != key, change
