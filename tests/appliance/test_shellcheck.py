"""All in-guest shell code is valid bash and shellcheck-clean (it runs on Ubuntu, openSUSE and Debian)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hostkit.paths import CONTEXT_DIR, PROVISION_DIR


def shell_scripts() -> list[Path]:
    candidates = [*(CONTEXT_DIR / "appliance").rglob("*"), *PROVISION_DIR.rglob("*")]
    scripts = []
    for path in candidates:
        if not path.is_file():
            continue
        head = path.read_bytes()[:200]
        if (
            path.suffix == ".sh"
            or head.startswith(b"#!/usr/bin/env bash")
            or b"shellcheck shell=bash" in head
        ):
            scripts.append(path)
    return sorted(scripts)


def test_the_scripts_are_found() -> None:
    names = {path.name for path in shell_scripts()}
    assert {"service", "flower-keysync", "flower-run", "net-90-service-appliance", "distro.sh"} <= names
    assert any(name.startswith("10-") for name in names)


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda path: path.name)
def test_bash_syntax(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_shellcheck_clean() -> None:
    scripts = [str(path) for path in shell_scripts()]
    result = subprocess.run(["shellcheck", "-x", *scripts], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_scripts_are_executable() -> None:
    steps = sorted(PROVISION_DIR.glob("[0-9][0-9]-*.sh"))
    assert steps, "no provisioning scripts"
    for step in steps:
        assert step.stat().st_mode & 0o111, f"{step.name} is not executable (Packer and the chroot run it)"
