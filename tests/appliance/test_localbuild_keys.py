"""The local builder's content keys and input checks (no build: these run in milliseconds)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from factory.images import localbuild
from factory.model.matrix import load_matrix
from hostkit import onecontext
from hostkit.errors import ConfigError

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
    base = localbuild.base_rootfs()
    package = onecontext.OneContextPackage(Path("/x.deb"), "7.0.0-0.gitae5a43e", "a" * 40, Path("/src"), "d1")

    def key_of(variant=variant, base=base, params="params v1", package=package) -> str:
        return localbuild.appliance_key(variant, base, params, package)

    key = key_of()
    assert key_of() == key
    assert key_of(params="params v2") != key
    assert key_of(variant=matrix.variant("superlink-1.41.0-debian12-cpu-standard-sklearn-x86_64")) != key
    assert key_of(base=localbuild.BaseRootfs("0" * 64, base.directory)) != key
    # another one-context source (commit or content) or version is another image
    for change in ({"commit": "b" * 40}, {"source_digest": "d2"}, {"version": "7.0.1-1"}):
        assert key_of(package=dataclasses.replace(package, **change)) != key, change
    # a change in a provisioning script changes the key
    provision = tmp_path / "provision"
    shutil.copytree(localbuild.PROVISION_DIR, provision)
    monkeypatch.setattr(localbuild, "PROVISION_DIR", provision)
    assert key_of() == key
    (provision / "10-base.sh").write_text((provision / "10-base.sh").read_text() + "# changed\n")
    assert key_of() != key


def test_without_the_upstream_source_the_build_fails_naming_it(matrix, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(onecontext, "UPSTREAM_DIR", tmp_path / "no-upstream")
    reason = onecontext.missing_reason()
    assert reason is not None and "ONE_UPSTREAM_DIR" in reason and "scripts/setup.sh" in reason
    with pytest.raises(ConfigError) as caught:
        localbuild.build_appliance(matrix.variant(SUPERLINK), params_text="params")
    assert "ONE_UPSTREAM_DIR" in str(caught.value)
    assert str(tmp_path / "no-upstream") in str(caught.value)


def test_a_source_at_another_commit_is_refused(monkeypatch, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    source = shared / "upstream" / "one-apps" / "context-linux"
    (source / "pkg").mkdir(parents=True)
    (source / "src").mkdir()
    for name in ("generate.sh", "targets.sh", "pkg/postinstall"):
        (source / name).write_text("")
    (shared / "upstream" / "README.md").write_text(
        "| `one-apps/context-linux/` | OpenNebula/one-apps `context-linux/` | " + "c" * 40 + " | x |\n"
    )
    monkeypatch.setattr(onecontext, "UPSTREAM_DIR", shared / "upstream")
    assert onecontext.missing_reason() is None
    with pytest.raises(ConfigError) as caught:
        onecontext.build_package()
    assert "c" * 40 in str(caught.value) and onecontext.SOURCE_COMMIT in str(caught.value)


def test_base_key_is_deterministic() -> None:
    assert localbuild.base_key() == localbuild.base_key()
    assert localbuild.base_rootfs().directory.name.startswith("debian12-")


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

    from hostkit.paths import REPO_ROOT

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
