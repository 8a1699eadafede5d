"""Local image builds on this machine: the Debian 12 base and the appliance images built from it.

- Base: a Debian 12 (bookworm + -updates + -security) root filesystem made with ``mmdebstrap``, and a
  bootable qcow2 of it with one-context-lite (Packer's ``file://`` base for the debian12 HCL).
- Appliance: a copy of the base with the provisioning scripts (``images/provision/NN-*.sh``, the same
  scripts the generated Packer HCL runs) executed inside ``systemd-nspawn`` without booting
  (``FL_BUILD_TARGET=chroot``), written as a raw ext4 filesystem image for the container driver, with a
  manifest (sha256, md5, virtual size, os-release, component versions).

Everything is cached by content under ``CACHE_DIR/images``: the key of an output is a digest of every
input that shapes it (package lists, mirrors, provisioning scripts, appliance code, parameter
defaults, the variant's pins), so an unchanged build is found and reused at once, and a changed input
builds anew. Entries are created under a lock and marked complete only when whole, so parallel builds
(test workers, other worktrees sharing the cache) never see half an image.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from factory.errors import ConfigError, FactoryError
from factory.paths import CACHE_DIR, CONTEXT_DIR, PROVISION_DIR
from factory.progress import DEFAULT, Progress

# Bump when the build procedure changes in a way the hashed inputs do not show.
BUILDER_VERSION = "1"

DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# What a Debian cloud image holds: kernel, systemd, sshd, Python, networking tools. The appliance
# packages come from the provisioning scripts, as they do on Ubuntu and openSUSE.
BASE_PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "dbus",
    "iproute2",
    "iputils-ping",
    "procps",
    "less",
    "netbase",
    "openssh-server",
    "python3",
    "ca-certificates",
    "curl",
    "sudo",
)
LOCAL_OS = "debian12"
# The host's trust store, for pip inside the build container (a TLS-inspecting proxy in front of PyPI
# is trusted by the host only). Used at build time; nothing of it stays in the image.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 3600


@dataclass(frozen=True)
class LocalVariant:
    """What the local builder needs to know about one image variant (see docs/architecture.md)."""

    name: str
    role: str
    flower: str
    os: str
    accel: str
    profile: str
    framework: str
    arch: str
    framework_packages: tuple[str, ...] = ()
    framework_index_url: str | None = None

    def provision_environment(self, payload: str, provision_dir: str) -> dict[str, str]:
        environment = {
            "FL_ROLE": self.role,
            "FL_VARIANT": self.name,
            "FL_FLOWER_VERSION": self.flower,
            "FL_OS": self.os,
            "FL_ACCEL": self.accel,
            "FL_PROFILE": self.profile,
            "FL_FRAMEWORK": self.framework,
            "FL_FRAMEWORK_PACKAGES": " ".join(self.framework_packages),
            "FL_ARCH": self.arch,
            "FL_ONE_CONTEXT": "lite",
            "FL_PAYLOAD": payload,
            "FL_PROVISION_DIR": provision_dir,
            "FL_BUILD_TARGET": "chroot",
        }
        if self.framework_index_url:
            environment["FL_FRAMEWORK_INDEX_URL"] = self.framework_index_url
        return environment


@dataclass(frozen=True)
class BaseImage:
    key: str
    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"


@dataclass(frozen=True)
class ApplianceImage:
    variant: str
    key: str
    image: Path
    manifest_path: Path
    reused: bool
    manifest: dict[str, object] = field(default_factory=dict)


def images_cache() -> Path:
    return CACHE_DIR / "images"


def check_buildable(variant: LocalVariant) -> None:
    """Only debian12 x86_64 CPU variants can be built on these machines."""
    if variant.os != LOCAL_OS:
        raise ConfigError(
            "images",
            variant.name,
            f"only {LOCAL_OS} variants are built locally; {variant.os} needs its vendor cloud image and "
            "Packer (python build.py build) on a machine that can download it",
        )
    if variant.arch != "x86_64" or variant.accel != "cpu":
        raise ConfigError("images", variant.name, "the local builder makes x86_64 CPU images only")


# ----------------------------------------------------------------------------------------------------
# content keys


def _digest(parts: Iterable[bytes]) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "big"))
        hasher.update(part)
    return hasher.hexdigest()


def tree_digest(root: Path) -> str:
    """Digest of a directory: relative paths, executable bits and contents (caches excluded)."""
    parts: list[bytes] = []
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        executable = b"x" if os.access(path, os.X_OK) else b"-"
        parts += [relative.encode(), executable, path.read_bytes()]
    return _digest(parts)


def base_key() -> str:
    description = {
        "builder": BUILDER_VERSION,
        "suite": DEBIAN_SUITE,
        "sources": DEBIAN_SOURCES,
        "packages": BASE_PACKAGES,
    }
    return _digest([json.dumps(description, sort_keys=True).encode()])


def appliance_key(variant: LocalVariant, base: BaseImage, params_text: str) -> str:
    description = {
        "builder": BUILDER_VERSION,
        "base": base.key,
        "variant": asdict(variant),
        "provision": tree_digest(PROVISION_DIR),
        "appliance": tree_digest(CONTEXT_DIR / "appliance"),
        "one-context-lite": tree_digest(CONTEXT_DIR / "one-context-lite"),
        "params": hashlib.sha256(params_text.encode()).hexdigest(),
    }
    return _digest([json.dumps(description, sort_keys=True).encode()])


# ----------------------------------------------------------------------------------------------------
# helpers


def build_environment() -> dict[str, str]:
    """The host environment without the variables that would leak into a build (PIP_*, venvs, uv)."""
    leaky = ("PIP_", "PYTHON", "UV_", "VIRTUAL_ENV", "CONDA")
    environment = {key: value for key, value in os.environ.items() if not key.startswith(leaky)}
    environment.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    environment["LC_ALL"] = "C.UTF-8"
    return environment


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _work_dir(name: str) -> Path:
    work = images_cache() / "work" / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
    work.mkdir(parents=True)
    return work


def _run_logged(argv: list[str], log: Path, progress: Progress, what: str, **kwargs: object) -> None:
    """Run a build command, its output into ``log``; ``==> `` lines are shown as progress."""
    with open(log, "a") as stream:
        stream.write(f"$ {' '.join(argv)}\n")
        stream.flush()
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            **kwargs,  # type: ignore[call-overload]
        )
        assert process.stdout is not None
        started = time.monotonic()
        for line in process.stdout:
            stream.write(line)
            if line.startswith("==> ") or line.startswith("ERROR: "):
                progress.line(f"{what}: {line[4:].rstrip()}" if line.startswith("==> ") else line.rstrip())
            if time.monotonic() - started > BUILD_TIMEOUT_S:
                process.kill()
        status = process.wait()
    if status != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise FactoryError(f"{what} failed (exit {status}); last lines of {log}:\n{tail}")


def _copy_tree(source: Path, destination: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], check=True)


def _remove_tree(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# ----------------------------------------------------------------------------------------------------
# the Debian 12 base


def base_image() -> BaseImage:
    key = base_key()
    return BaseImage(key, images_cache() / "base" / f"{LOCAL_OS}-{key[:16]}")


def build_base(progress: Progress = DEFAULT, force: bool = False) -> BaseImage:
    """The Debian 12 base root filesystem (mmdebstrap), built once per content key."""
    base = base_image()
    marker = base.directory / ".complete"
    if marker.exists() and not force:
        progress.line(f"{LOCAL_OS} base: reusing {base.directory} (unchanged inputs)")
        return base
    with _locked(base.directory.with_name(f".{base.directory.name}.lock")):
        if marker.exists() and not force:
            progress.line(f"{LOCAL_OS} base: reusing {base.directory} (built meanwhile)")
            return base
        with progress.stage(f"{LOCAL_OS} base: mmdebstrap {DEBIAN_SUITE} ({len(BASE_PACKAGES)} packages)"):
            work = _work_dir(f"base-{base.key[:16]}")
            try:
                rootfs = work / "rootfs"
                argv = [
                    "mmdebstrap",
                    "--mode=root",
                    "--format=directory",
                    "--variant=apt",
                    "--components=main",
                    f"--include={','.join(BASE_PACKAGES)}",
                    "--aptopt=Acquire::Retries \"3\"",
                    "--customize-hook=echo localhost >\"$1/etc/hostname\"",
                    "--customize-hook=: >\"$1/etc/machine-id\"",
                    DEBIAN_SUITE,
                    str(rootfs),
                    *DEBIAN_SOURCES,
                ]
                _run_logged(argv, work / "build.log", progress, "base", env=build_environment())
                (work / "key").write_text(base.key + "\n")
                (work / "build.log").rename(work / "mmdebstrap.log")
                (work / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
                _remove_tree(base.directory)
                base.directory.parent.mkdir(parents=True, exist_ok=True)
                work.rename(base.directory)
            finally:
                _remove_tree(work)
    return base


def build_base_qcow2(progress: Progress = DEFAULT, force: bool = False) -> Path:
    """``debian12-base.qcow2``: the base plus one-context-lite, bootable (Packer's file:// base image).

    Next to it, ``debian12-base.qcow2.sha256`` holds the checksum Packer is given.
    """
    from factory import diskimage

    base = build_base(progress)
    lite_digest = tree_digest(CONTEXT_DIR / "one-context-lite")
    key = _digest([base.key.encode(), lite_digest.encode(), BUILDER_VERSION.encode()])
    directory = images_cache() / "base-qcow2" / f"{LOCAL_OS}-{key[:16]}"
    image = directory / f"{LOCAL_OS}-base.qcow2"
    marker = directory / ".complete"
    if marker.exists() and not force:
        progress.line(f"{LOCAL_OS} base qcow2: reusing {image}")
        return image
    with _locked(directory.with_name(f".{directory.name}.lock")):
        if marker.exists() and not force:
            return image
        with progress.stage(f"{LOCAL_OS} base qcow2 (base + one-context-lite, extlinux)"):
            work = _work_dir(f"base-qcow2-{key[:16]}")
            try:
                rootfs = work / "rootfs"
                _copy_tree(base.rootfs, rootfs)
                _run_logged(
                    [str(CONTEXT_DIR / "one-context-lite" / "install.sh"), str(rootfs)],
                    work / "build.log",
                    progress,
                    "one-context-lite",
                    env=build_environment(),
                )
                output = work / image.name
                diskimage.make_bootable_qcow2(rootfs, output)
                _remove_tree(rootfs)
                sha256 = diskimage.sha256_file(output)
                (work / f"{image.name}.sha256").write_text(f"{sha256}  {image.name}\n")
                (work / ".complete").write_text(sha256 + "\n")
                _remove_tree(directory)
                directory.parent.mkdir(parents=True, exist_ok=True)
                work.rename(directory)
            finally:
                _remove_tree(work)
    return image


# ----------------------------------------------------------------------------------------------------
# appliance images


def _payload(work: Path, variant: LocalVariant, params_text: str) -> Path:
    """FL_PAYLOAD: appliance/, one-context-lite/, params/params-<role>.sh."""
    payload = work / "payload"
    (payload / "params").mkdir(parents=True)
    shutil.copytree(CONTEXT_DIR / "appliance", payload / "appliance", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(CONTEXT_DIR / "one-context-lite", payload / "one-context-lite")
    (payload / "params" / f"params-{variant.role}.sh").write_text(params_text)
    return payload


def provision_rootfs(rootfs: Path, variant: LocalVariant, payload: Path, log: Path, progress: Progress) -> None:
    """Run images/provision/NN-*.sh inside ``rootfs`` with systemd-nspawn (no boot), as Packer would."""
    environment = variant.provision_environment("/run/fl-payload", "/run/fl-provision")
    machine = f"fl-wt-appliance-build-{os.getpid()}"
    argv = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--as-pid2",
        f"--machine={machine}",
        f"--directory={rootfs}",
        f"--bind-ro={PROVISION_DIR}:/run/fl-provision",
        f"--bind-ro={payload}:/run/fl-payload",
    ]
    if HOST_CA_BUNDLE.exists():
        argv += [f"--bind-ro={HOST_CA_BUNDLE}:/run/fl-host-ca.pem"]
        environment |= {"PIP_CERT": "/run/fl-host-ca.pem", "SSL_CERT_FILE": "/run/fl-host-ca.pem"}
    argv += [f"--setenv={key}={value}" for key, value in sorted(environment.items())]
    script = (
        "set -euo pipefail; for step in /run/fl-provision/[0-9][0-9]-*.sh; do "
        'echo "==> ${step##*/}"; "${step}"; done'
    )
    argv += ["/bin/bash", "-c", script]
    _run_logged(argv, log, progress, variant.name, env=build_environment())


def _os_release(rootfs: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    path = rootfs / "etc" / "os-release"
    if not path.exists():
        path = rootfs / "usr" / "lib" / "os-release"
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key] = value.strip().strip('"')
    return values


def _dpkg_versions(rootfs: Path, packages: Iterable[str]) -> dict[str, str]:
    result = subprocess.run(
        ["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W", "-f=${Package} ${Version}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    versions = {}
    for line in result.stdout.splitlines():
        name, _, version = line.partition(" ")
        if version:
            versions[name] = version
    return versions


def component_versions(rootfs: Path) -> dict[str, object]:
    """Versions baked into a provisioned root filesystem (for the manifest)."""
    components_file = rootfs / "etc" / "one-appliance" / "flower" / "components.json"
    python_side = json.loads(components_file.read_text())
    kernels = sorted(
        (path.name.removeprefix("vmlinuz-") for path in (rootfs / "boot").glob("vmlinuz-*")),
        key=lambda name: [int(part) for part in re.findall(r"\d+", name)],
    )
    lite_files = rootfs / "usr" / "share" / "one-context-lite" / "files.sha256"
    return {
        "flwr": python_side.get("flwr"),
        "python": python_side.get("python"),
        "python_packages": python_side.get("packages", {}),
        "kernel": kernels[-1] if kernels else None,
        "one_context": {
            "kind": "lite",
            "digest": hashlib.sha256(lite_files.read_bytes()).hexdigest()[:16] if lite_files.exists() else None,
        },
        "system_packages": _dpkg_versions(
            rootfs, ["systemd", "openssh-server", "openssl", "nginx", "python3", "curl", "jq", "sqlite3"]
        ),
    }


def appliance_directory(variant: LocalVariant, key: str) -> Path:
    return images_cache() / "appliances" / f"{variant.name}-{key[:16]}"


def build_appliance(
    variant: LocalVariant,
    params_text: str,
    progress: Progress = DEFAULT,
    force: bool = False,
) -> ApplianceImage:
    """Build (or reuse) the raw ext4 appliance image of a debian12 variant and its manifest.

    ``params_text`` is the generated in-guest parameter defaults file of the variant's role
    (``params-<role>.sh`` from factory/params.py).
    """
    from factory import diskimage

    check_buildable(variant)
    base = build_base(progress)
    key = appliance_key(variant, base, params_text)
    directory = appliance_directory(variant, key)
    image = directory / f"{variant.name}.img"
    manifest_path = directory / f"{variant.name}.manifest.json"
    marker = directory / ".complete"
    if marker.exists() and not force:
        progress.line(f"{variant.name}: reusing {image} (unchanged inputs, key {key[:16]})")
        return ApplianceImage(variant.name, key, image, manifest_path, True, json.loads(manifest_path.read_text()))
    with _locked(directory.with_name(f".{directory.name}.lock")):
        if marker.exists() and not force:
            progress.line(f"{variant.name}: reusing {image} (built meanwhile)")
            manifest = json.loads(manifest_path.read_text())
            return ApplianceImage(variant.name, key, image, manifest_path, True, manifest)
        started = time.monotonic()
        work = _work_dir(f"{variant.name}-{key[:16]}")
        try:
            rootfs = work / "rootfs"
            with progress.stage(f"{variant.name}: copy the {LOCAL_OS} base"):
                _copy_tree(base.rootfs, rootfs)
            payload = _payload(work, variant, params_text)
            with progress.stage(f"{variant.name}: provisioning scripts in systemd-nspawn"):
                provision_rootfs(rootfs, variant, payload, work / "build.log", progress)
            components = component_versions(rootfs)
            os_release = _os_release(rootfs)
            with progress.stage(f"{variant.name}: raw ext4 image"):
                diskimage.make_ext4_image(rootfs, work / image.name)
            _remove_tree(rootfs)
            _remove_tree(payload)
            sums = diskimage.checksums(work / image.name)
            manifest = {
                "variant": variant.name,
                "role": variant.role,
                "flower": variant.flower,
                "os": variant.os,
                "accel": variant.accel,
                "profile": variant.profile,
                "framework": variant.framework,
                "arch": variant.arch,
                "file": image.name,
                "format": "raw",
                "filesystem": "ext4",
                "virtual_size": (work / image.name).stat().st_size,
                "sha256": sums["sha256"],
                "md5": sums["md5"],
                "os_id": os_release.get("ID"),
                "os_release": os_release.get("VERSION_ID"),
                "os_pretty_name": os_release.get("PRETTY_NAME"),
                "components": components,
                "build": {
                    "builder": "localbuild/nspawn",
                    "key": key,
                    "base_key": base.key,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "duration_s": round(time.monotonic() - started, 1),
                },
            }
            (work / manifest_path.name).write_text(json.dumps(manifest, indent=2) + "\n")
            (work / ".complete").write_text(key + "\n")
            _remove_tree(directory)
            directory.parent.mkdir(parents=True, exist_ok=True)
            work.rename(directory)
        finally:
            _remove_tree(work)
    progress.line(f"{variant.name}: built {image} in {manifest['build']['duration_s']} s")  # type: ignore[index]
    return ApplianceImage(variant.name, key, image, manifest_path, False, manifest)
