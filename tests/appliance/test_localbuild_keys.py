"""The local builder's content keys and input checks (no build: these run in milliseconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from factory import localbuild
from factory.errors import ConfigError
from factory.matrix import load_matrix

SUPERLINK = "superlink-1.42.0-debian12-cpu-standard-sklearn-x86_64"


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


def test_tree_digest_sees_content_and_executable_bit(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "lib").mkdir(parents=True)
    script = tree / "10-x.sh"
    script.write_text("echo one\n")
    (tree / "lib" / "a.sh").write_text("a\n")
    first = localbuild.tree_digest(tree)
    assert localbuild.tree_digest(tree) == first
    script.chmod(0o755)
    executable = localbuild.tree_digest(tree)
    assert executable != first
    script.write_text("echo two\n")
    assert localbuild.tree_digest(tree) != executable
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert localbuild.tree_digest(tree) == localbuild.tree_digest(tree)


def test_appliance_key_is_stable_and_follows_every_input(matrix, monkeypatch, tmp_path: Path) -> None:
    variant = matrix.variant(SUPERLINK)
    base = localbuild.base_image()
    key = localbuild.appliance_key(variant, base, "params v1")
    assert localbuild.appliance_key(variant, base, "params v1") == key
    assert localbuild.appliance_key(variant, base, "params v2") != key
    other = matrix.variant("superlink-1.41.0-debian12-cpu-standard-sklearn-x86_64")
    assert localbuild.appliance_key(other, base, "params v1") != key
    changed_base = localbuild.BaseImage("0" * 64, base.directory)
    assert localbuild.appliance_key(variant, changed_base, "params v1") != key
    # a change in a provisioning script changes the key
    provision = tmp_path / "provision"
    shutil.copytree(localbuild.PROVISION_DIR, provision)
    monkeypatch.setattr(localbuild, "PROVISION_DIR", provision)
    assert localbuild.appliance_key(variant, base, "params v1") == key
    (provision / "10-base.sh").write_text((provision / "10-base.sh").read_text() + "# changed\n")
    assert localbuild.appliance_key(variant, base, "params v1") != key


def test_base_key_is_deterministic() -> None:
    assert localbuild.base_key() == localbuild.base_key()
    assert localbuild.base_image().directory.name.startswith("debian12-")


@pytest.mark.parametrize(
    "name",
    [
        "supernode-1.42.0-ubuntu2404-gpu-standard-pytorch-x86_64",
        "superlink-1.42.0-opensuse156-cpu-standard-sklearn-x86_64",
    ],
)
def test_only_debian12_is_built_here(matrix, name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        localbuild.check_buildable(matrix.variant(name))
    assert name in str(caught.value) and "only debian12" in str(caught.value)


def test_build_environment_drops_variables_that_leak_into_a_chroot(monkeypatch) -> None:
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_INDEX_URL", "https://example.invalid/simple")
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere")
    environment = localbuild.build_environment()
    assert not any(key.startswith("PIP_") for key in environment)
    assert "VIRTUAL_ENV" not in environment
    assert environment["PATH"] == os.environ["PATH"]


def test_images_command_refuses_other_operating_systems() -> None:
    import subprocess
    import sys

    from factory.paths import REPO_ROOT

    result = subprocess.run(
        [sys.executable, "build.py", "images", "--only", "os=ubuntu2404"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "only debian12 variants are built on this machine" in result.stderr
    assert result.stdout == ""
