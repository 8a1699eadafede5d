"""packer build planning, the in-guest facts gate, image hygiene script lint and the manifest writer."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.images.hcl import RenderSources, provisioning_scripts, render_variant
from factory.images.packer import (
    VALIDATE_ONLY_BASE,
    detect_accelerator,
    plan_build,
    supports_required_plugins,
)
from factory.model.manifest import parse_os_release
from factory.model.matrix import load_matrix
from hostkit.errors import ConfigError, FactoryError
from hostkit.paths import PACKER_DIR, PROVISION_DIR, REPO_ROOT

DEBIAN_NODE = "supernode-1.42.0-debian12-cpu-standard-sklearn-x86_64"
UBUNTU_NODE = "supernode-1.42.0-ubuntu2404-cpu-standard-sklearn-x86_64"
needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed")


@pytest.fixture(scope="module")
def matrix():
    return load_matrix()


@pytest.fixture
def rendered(matrix, tmp_path: Path) -> Path:
    provision = tmp_path / "provision"
    provision.mkdir()
    (provision / "10-base.sh").write_text("#!/usr/bin/env bash\n")
    sources = RenderSources(provision=provision)
    root = tmp_path / "hcl"
    for name in (DEBIAN_NODE, UBUNTU_NODE):
        render_variant(matrix, matrix.variant(name), root, sources)
    return root


@needs_packer
def test_local_base_build_needs_real_base_variables(matrix, rendered: Path, tmp_path: Path) -> None:
    variant = matrix.variant(DEBIAN_NODE)
    with pytest.raises(
        ConfigError, match="builds from a local base: pass base_image_url and base_image_checksum"
    ):
        plan_build(variant, {}, hcl_root=rendered, images_root=tmp_path / "images")
    with pytest.raises(ConfigError, match="for validation only"):
        plan_build(variant, dict(VALIDATE_ONLY_BASE), hcl_root=rendered, images_root=tmp_path / "images")
    base = {"base_image_url": "file:///var/tmp/base.qcow2", "base_image_checksum": "sha256:" + "0" * 64}
    plan = plan_build(variant, {**base, "memory": "4096"}, hcl_root=rendered, images_root=tmp_path / "images")
    command = plan.command
    assert command[1:3] == ["build", "-parallel-builds=1"]
    assert "-var=base_image_url=file:///var/tmp/base.qcow2" in command
    assert "-var=memory=4096" in command
    assert f"-var=accelerator={detect_accelerator('x86_64')}" in command
    assert f"-var=output_directory={plan.staging.resolve()}" in command
    assert plan.environment["TMPDIR"].startswith(str(REPO_ROOT))
    assert plan.log.name == f"{DEBIAN_NODE}.packer.log"
    if not supports_required_plugins():
        assert command[-1].endswith(f"tree/{DEBIAN_NODE}")
    # The user's accelerator wins over the detected one.
    chosen = plan_build(variant, {**base, "accelerator": "kvm"}, hcl_root=rendered, images_root=tmp_path)
    assert "-var=accelerator=kvm" in chosen.command


def test_accelerator_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_FACTORY_ACCEL", "kvm")
    assert detect_accelerator("x86_64") == "kvm"
    monkeypatch.delenv("FLOWER_FACTORY_ACCEL")
    assert detect_accelerator("aarch64") == "tcg"


@needs_packer
def test_build_refuses_an_image_without_provisioning(matrix, tmp_path: Path) -> None:
    sources = RenderSources(provision=tmp_path / "none")
    render_variant(matrix, matrix.variant(UBUNTU_NODE), tmp_path / "hcl", sources)
    with pytest.raises(FactoryError, match=f"{UBUNTU_NODE}: no provisioning scripts"):
        plan_build(matrix.variant(UBUNTU_NODE), {}, hcl_root=tmp_path / "hcl")


@needs_packer
def test_build_dry_run_prints_the_packer_commands(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "build.py"), "build", "--dry-run", "--only", f"name={UBUNTU_NODE}",
         "--out", str(tmp_path), "--var", "memory=3072"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if provisioning_scripts(PROVISION_DIR):
        assert result.returncode == 0, result.stderr
        assert "packer build -parallel-builds=1" in result.stdout.replace("'", "")
        assert "-var=memory=3072" in result.stdout and "TMPDIR=" in result.stdout
        assert not (REPO_ROOT / "build" / "packer-work" / UBUNTU_NODE).exists()  # nothing ran
    else:  # images/provision arrives with the appliance branch; until then the build must refuse
        assert result.returncode == 1
        assert f"{UBUNTU_NODE}: no provisioning scripts" in result.stderr


# ---------------------------------------------------------------------------------------------- facts gate


def fake_root(tmp_path: Path, flwr: str, packages: dict[str, str]) -> Path:
    root = tmp_path / "root"
    site = root / "opt" / "flower" / "venv" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (root / "opt" / "flower" / "venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.2\n")
    (site / f"flwr-{flwr}.dist-info").mkdir()
    for name, version in packages.items():
        (site / f"{name}-{version}.dist-info").mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
    )
    (root / "lib" / "modules" / "6.1.0-28-cloud-amd64").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: one-context\nStatus: install ok installed\nArchitecture: all\nVersion: 7.0.0-0.gitae5a43e\n"
    )
    return root


def run_facts(root: Path, facts: Path, packages: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ["PATH"],
        "FL_ROOT": str(root),
        "FL_FACTS": str(facts),
        "FL_VARIANT": DEBIAN_NODE,
        "FL_FLOWER_VERSION": "1.42.0",
        "FL_FRAMEWORK_PACKAGES": packages,
        "FL_ONE_CONTEXT": "source",
        "FL_ACCEL": "cpu",
    }
    script = PACKER_DIR / "scripts" / "collect-facts.sh"
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=False)


def test_facts_gate_passes_when_the_image_matches_its_pins(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "1.42.0", {"scikit_learn": "1.9.1", "numpy": "2.4.6"})
    result = run_facts(root, tmp_path / "facts", "scikit-learn==1.9.1 numpy==2.4.6")
    assert result.returncode == 0, result.stderr
    facts = dict(line.split("=", 1) for line in (tmp_path / "facts" / "facts.env").read_text().splitlines())
    assert facts["flower"] == "1.42.0"
    assert facts["python"] == "3.11.2"
    assert facts["package_scikit_learn"] == "1.9.1" and facts["package_numpy"] == "2.4.6"
    assert facts["kernel"] == "6.1.0-28-cloud-amd64"
    assert facts["one_context"] == "7.0.0-0.gitae5a43e"
    assert parse_os_release((tmp_path / "facts" / "os-release").read_text())["VERSION_ID"] == "12"


def test_facts_gate_fails_the_build_on_any_mismatch(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "1.41.0", {"scikit_learn": "1.8.0"})
    result = run_facts(root, tmp_path / "facts", "scikit-learn==1.9.1 numpy==2.4.6")
    assert result.returncode == 1
    assert "flwr 1.41.0 installed, 1.42.0 pinned" in result.stderr
    assert "scikit-learn 1.8.0 installed, 1.9.1 pinned" in result.stderr
    assert "numpy missing installed, 2.4.6 pinned" in result.stderr
    empty = tmp_path / "empty"
    (empty / "etc").mkdir(parents=True)
    (empty / "etc" / "os-release").write_text("ID=debian\n")
    nothing = run_facts(empty, tmp_path / "facts2", "numpy==2.4.6")
    assert nothing.returncode == 1 and "flwr is not installed" in nothing.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_in_guest_scripts_are_shellcheck_clean() -> None:
    scripts = sorted((PACKER_DIR / "scripts").glob("*.sh"))
    assert scripts
    result = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


# ---------------------------------------------------------------------------------------------- manifest


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img is not installed")
def test_manifest_of_a_real_qcow2(matrix, rendered: Path, tmp_path: Path) -> None:
    directory = rendered / DEBIAN_NODE
    output = tmp_path / "output"
    output.mkdir()
    image = output / f"{DEBIAN_NODE}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    root = fake_root(tmp_path, "1.42.0", {"scikit_learn": "1.9.1", "numpy": "2.4.6"})
    assert run_facts(root, output / "facts", "scikit-learn==1.9.1 numpy==2.4.6").returncode == 0
    # The rendered directory's own copy of the script, run by the host's python3 as Packer does.
    result = subprocess.run(
        ["python3", str(directory / "scripts" / "manifest.py"), "--image", str(image),
         "--variant", str(directory / "variant.json"), "--facts", str(output / "facts")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = json.loads((output / f"{DEBIAN_NODE}.manifest.json").read_text())
    content = image.read_bytes()
    assert manifest["sha256"] == hashlib.sha256(content).hexdigest()
    assert manifest["md5"] == hashlib.md5(content).hexdigest()
    assert manifest["virtual_size"] == 64 * 1024 * 1024 and manifest["format"] == "qcow2"
    assert manifest["size"] == len(content)
    assert manifest["os_release"]["PRETTY_NAME"] == "Debian GNU/Linux 12 (bookworm)"
    assert manifest["components"]["flower"] == "1.42.0"
    assert manifest["components"]["framework_packages"] == {"scikit_learn": "1.9.1", "numpy": "2.4.6"}
    assert manifest["pins"] == matrix.variant(DEBIAN_NODE).pins.as_dict()
    assert manifest["variant"] == DEBIAN_NODE and manifest["role"] == "supernode"
    broken = subprocess.run(
        ["python3", str(directory / "scripts" / "manifest.py"), "--image", str(image),
         "--variant", str(directory / "variant.json"), "--facts", str(tmp_path / "absent")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert broken.returncode == 1 and "manifest:" in broken.stderr


# ---------------------------------------------------------------------------------------------- cache entries


def test_a_cache_entry_is_made_once_and_never_seen_half_written(monkeypatch, tmp_path: Path) -> None:
    from factory.images import localbuild

    monkeypatch.setattr(localbuild, "images_cache", lambda: tmp_path)
    entry = tmp_path / "appliances" / "x-0123"
    calls: list[Path] = []

    def fill(work: Path) -> str:
        calls.append(work)
        (work / "x.img").write_text("image")
        return "key"

    def broken(work: Path) -> str:
        (work / "x.img").write_text("half")
        raise RuntimeError("build failed")

    with pytest.raises(RuntimeError):
        localbuild._cache_entry(entry, "x", False, broken)
    assert not entry.exists() and list((tmp_path / "work").iterdir()) == []
    assert localbuild._cache_entry(entry, "x", False, fill) is False
    assert localbuild._cache_entry(entry, "x", False, fill) is True
    assert len(calls) == 1 and (entry / ".complete").read_text() == "key\n"
    assert localbuild._cache_entry(entry, "x", True, fill) is False and len(calls) == 2


def test_an_image_reads_the_manifest_beside_it(tmp_path: Path) -> None:
    from factory.model.image import Image, ImageFormat
    from hostkit.errors import FactoryError

    image = tmp_path / f"{DEBIAN_NODE}.img"
    image.write_bytes(b"")
    with pytest.raises(FactoryError, match="no readable manifest"):
        Image.beside(DEBIAN_NODE, image, ImageFormat.RAW)
    (tmp_path / f"{DEBIAN_NODE}.manifest.json").write_text('{"sha256": "ab"}')
    built = Image.beside(DEBIAN_NODE, image, ImageFormat.RAW, key="k", reused=True)
    assert (built.manifest["sha256"], built.manifest_path.name, built.format) == (
        "ab",
        f"{DEBIAN_NODE}.manifest.json",
        "raw",
    )
