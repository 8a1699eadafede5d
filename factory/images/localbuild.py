"""Local image builds on this machine: the Debian 12 base and the appliance images built from it.

- Base: a Debian 12 (bookworm + -updates + -security) root filesystem made with ``mmdebstrap``, and a
  bootable qcow2 of it with OpenNebula's one-context (Packer's ``file://`` base for the debian12 HCL).
- one-context: the package built from the pinned upstream source (hostkit/onecontext.py), installed by
  the provisioning like the released one (``FL_ONE_CONTEXT=source``).
- Appliance: a copy of the base with the payload the Packer build uploads (``provision/``, ``appliance/``,
  ``params/params-<role>.sh``), plus ``one-context/<the .deb>``, and the same steps it runs: the provisioning
  scripts (``images/provision/NN-*.sh``), then ``collect-facts.sh`` (fails on a pin mismatch) and
  ``sysprep.sh`` from ``packer/scripts``, all inside ``systemd-nspawn`` without booting
  (``FL_BUILD_TARGET=chroot``). The result is written as a raw ext4 filesystem image for the container
  driver, with the manifest every build path writes (factory/model/manifest.py).

Everything is cached by content under ``CACHE_DIR/images``: the key of an output is a digest of every
input that shapes it (package lists, mirrors, provisioning scripts, appliance code, parameter
defaults, the variant's pins), so an unchanged build is found and reused at once, and a changed input
builds anew. Entries are created under a lock and marked complete only when whole, so parallel builds
(test workers, other worktrees sharing the cache) never see half an image.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from factory.images.layers import (
    Layer,
    LayerName,
    digest,
    plan_layers,
    provisioning_steps,
    split_steps,
    tree_digest,
)
from factory.images.timings import SESSION, BuildTimings, EntryKind, Outcome
from factory.model import manifest as manifest_module
from factory.model.image import Image, ImageFormat
from factory.model.matrix import Variant
from hostkit import onecontext
from hostkit.errors import ConfigError, FactoryError
from hostkit.paths import APPS_DIR, CACHE_DIR, CONTEXT_DIR, MONITORING_DIR, PACKER_DIR, PROVISION_DIR
from hostkit.progress import DEFAULT, Progress

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
class BaseRootfs:
    """The cached Debian 12 base root filesystem (a directory, not an image) every local build copies."""

    key: str
    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"


def images_cache() -> Path:
    return CACHE_DIR / "images"


def check_buildable(variant: Variant) -> None:
    """Only debian12 x86_64 CPU variants (local base) can be built on these machines."""
    if variant.os != LOCAL_OS or not variant.pins.base_image.local:
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


def base_key() -> str:
    description = {
        "builder": BUILDER_VERSION,
        "suite": DEBIAN_SUITE,
        "sources": DEBIAN_SOURCES,
        "packages": BASE_PACKAGES,
    }
    return digest([json.dumps(description, sort_keys=True).encode()])


HYGIENE_SCRIPTS = ("collect-facts.sh", "sysprep.sh")


def appliance_key(
    variant: Variant, base: BaseRootfs, params_text: str, one_context: onecontext.OneContextPackage
) -> str:
    description = {
        "builder": BUILDER_VERSION,
        "base": base.key,
        "variant": variant.as_dict(),
        "provision": tree_digest(PROVISION_DIR),
        "hygiene": [(PACKER_DIR / "scripts" / name).read_text() for name in HYGIENE_SCRIPTS],
        "appliance": tree_digest(CONTEXT_DIR / "appliance"),
        "apps": tree_digest(APPS_DIR),  # the bundled app of train on deploy (/opt/flower/apps)
        "monitoring": tree_digest(MONITORING_DIR),  # the monitoring role's files (SuperLink image)
        "one-context": [one_context.commit, one_context.source_digest, one_context.version],
        "params": hashlib.sha256(params_text.encode()).hexdigest(),
    }
    return digest([json.dumps(description, sort_keys=True).encode()])


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


def _cache_entry(directory: Path, work_name: str, force: bool, fill: Callable[[Path], str]) -> bool:
    """The one way a cache entry is made: unless ``directory`` is complete (and not ``force``), ``fill``
    writes it into a fresh work directory and returns the text of its completion marker; then the work
    directory replaces ``directory`` in one rename. Under a lock, re-checked after waiting for it, so
    parallel builders never see half an entry and never build one twice. True when it was reused."""
    marker = directory / ".complete"
    if marker.exists() and not force:
        return True
    with _locked(directory.with_name(f".{directory.name}.lock")):
        if marker.exists() and not force:
            return True
        work = _work_dir(work_name)
        try:
            (work / ".complete").write_text(fill(work) + "\n")
            _remove_tree(directory)
            directory.parent.mkdir(parents=True, exist_ok=True)
            work.rename(directory)
        finally:
            _remove_tree(work)
    return False


def _copy_tree(source: Path, destination: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], check=True)


def _remove_tree(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


# ----------------------------------------------------------------------------------------------------
# the Debian 12 base


def base_rootfs() -> BaseRootfs:
    key = base_key()
    return BaseRootfs(key, images_cache() / "base" / f"{LOCAL_OS}-{key[:16]}")


def build_base(
    progress: Progress = DEFAULT, force: bool = False, timings: BuildTimings | None = None
) -> BaseRootfs:
    """The Debian 12 base root filesystem (mmdebstrap), built once per content key; recorded in
    ``timings`` when built, or when found the first time for that record."""
    base = base_rootfs()
    started = time.monotonic()

    def fill(work: Path) -> str:
        with progress.stage(f"{LOCAL_OS} base: mmdebstrap {DEBIAN_SUITE} ({len(BASE_PACKAGES)} packages)"):
            argv = [
                "mmdebstrap",
                "--mode=root",
                "--format=directory",
                "--variant=apt",
                "--components=main",
                f"--include={','.join(BASE_PACKAGES)}",
                '--aptopt=Acquire::Retries "3"',
                '--customize-hook=echo localhost >"$1/etc/hostname"',
                '--customize-hook=: >"$1/etc/machine-id"',
                DEBIAN_SUITE,
                str(work / "rootfs"),
                *DEBIAN_SOURCES,
            ]
            _run_logged(argv, work / "build.log", progress, "base", env=build_environment())
        (work / "key").write_text(base.key + "\n")
        (work / "build.log").rename(work / "mmdebstrap.log")
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    reused = _cache_entry(base.directory, f"base-{base.key[:16]}", force, fill)
    if reused:
        progress.line(f"{LOCAL_OS} base: reusing {base.directory} (unchanged inputs)")
    if timings is not None and not (reused and timings.seen(EntryKind.BASE, base.key)):
        timings.record(EntryKind.BASE, LOCAL_OS, "", base.key, reused, time.monotonic() - started)
    return base


BUILD_TRUST_DIR = "etc/fl-build"
BUILD_TRUST_MARK = "# fl-build: build-time trust, removed by images/provision/90-cleanup.sh"


def add_build_trust(rootfs: Path, bundle: bytes) -> None:
    """Let pip in a Packer build VM trust what this host trusts (a TLS-inspecting proxy in front of PyPI
    is trusted by the host only), as the chroot build does with a bind mount. Build time only: the
    provisioning's cleanup removes the bundle and the variable, and its checks fail the build otherwise."""
    directory = rootfs / BUILD_TRUST_DIR
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca-bundle.crt").write_bytes(bundle)
    environment = rootfs / "etc" / "environment"
    existing = environment.read_text() if environment.exists() else ""
    environment.write_text(f"{existing}{BUILD_TRUST_MARK}\nPIP_CERT=/{BUILD_TRUST_DIR}/ca-bundle.crt\n")


def base_qcow2_size() -> int:
    """The base qcow2's disk size: the debian12 ``disk_size`` of matrix.yaml's Packer layers (the
    image's filesystem fills the disk: nothing in it grows the root filesystem at boot)."""
    from factory.model.matrix import load_matrix

    text = str(load_matrix().packer.os.get(LOCAL_OS, {}).get("disk_size", "4G"))
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    if text[-1:].upper() in units:
        return int(float(text[:-1]) * units[text[-1].upper()])
    return int(text)


def base_qcow2_directory(base: BaseRootfs, package: onecontext.OneContextPackage) -> Path:
    """Where the base qcow2 of ``base`` with ``package`` is cached (its key: the base, one-context, the
    provisioning's distro.sh, the host's trust store and the disk size)."""
    trust = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    size = str(base_qcow2_size()).encode()
    distro = (PROVISION_DIR / "lib" / "distro.sh").read_bytes()
    parts = [base.key, package.commit, package.source_digest, BUILDER_VERSION]
    key = digest([*(part.encode() for part in parts), distro, trust, size])
    return images_cache() / "base-qcow2" / f"{LOCAL_OS}-{key[:16]}"


def qcow2_key(appliance: str, base_sha256: str) -> str:
    """The key of a variant's Packer-built qcow2: its appliance key and the base qcow2's checksum."""
    return digest([appliance.encode(), base_sha256.encode()])


def qcow2_directory(variant: Variant, key: str) -> Path:
    return images_cache() / "qcow2" / f"{variant.name}-{key[:16]}"


def build_base_qcow2(progress: Progress = DEFAULT, force: bool = False) -> Path:
    """``debian12-base.qcow2``: the base plus OpenNebula's one-context (built from the pinned upstream
    source, installed and its network service set up by the provisioning's own ``distro.sh``), bootable
    (Packer's file:// base image: it boots with a CONTEXT CD), plus the host's trust store for pip during
    the build (``add_build_trust``).

    Next to it, ``debian12-base.qcow2.sha256`` holds the checksum Packer is given.
    """
    base = build_base(progress)
    package = onecontext.build_package()
    trust = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.exists() else b""
    directory = base_qcow2_directory(base, package)
    image = directory / f"{LOCAL_OS}-base.qcow2"

    def fill(work: Path) -> str:
        with progress.stage(f"{LOCAL_OS} base qcow2 (base + one-context {package.version}, extlinux)"):
            return _make_base_qcow2(work, base, package, trust, image.name, progress)

    if _cache_entry(directory, f"base-qcow2-{directory.name}", force, fill):
        progress.line(f"{LOCAL_OS} base qcow2: reusing {image}")
    return image


def _make_base_qcow2(
    work: Path,
    base: BaseRootfs,
    package: onecontext.OneContextPackage,
    trust: bytes,
    name: str,
    progress: Progress,
) -> str:
    """Write ``work/<name>`` and its ``.sha256``; return the checksum."""
    from hostkit import diskimage

    rootfs = work / "rootfs"
    _copy_tree(base.rootfs, rootfs)
    payload = work / "payload"
    shutil.copytree(PROVISION_DIR / "lib", payload / "provision" / "lib")
    (payload / "one-context").mkdir()
    shutil.copy2(package.deb, payload / "one-context" / package.deb.name)
    script = (
        "set -euo pipefail\n"
        f". {GUEST_PAYLOAD}/provision/lib/distro.sh\n"
        "distro_block_service_starts\ndistro_refresh\ndistro_install_one_context\n"
        "distro_allow_service_starts\ndistro_cleanup\n"
    )
    environment = {
        "FL_OS": LOCAL_OS,
        "FL_BUILD_TARGET": "chroot",
        "FL_ONE_CONTEXT": "source",
        "FL_PAYLOAD": GUEST_PAYLOAD,
        "FL_PROVISION_STEP": "base-one-context",
    }
    argv = _nspawn_argv(rootfs, payload, environment, script)
    _run_logged(argv, work / "build.log", progress, "one-context", env=build_environment())
    _remove_tree(payload)
    if trust:
        add_build_trust(rootfs, trust)
    diskimage.make_bootable_qcow2(rootfs, work / name, size=base_qcow2_size())
    _remove_tree(rootfs)
    sha256 = diskimage.sha256_file(work / name)
    (work / f"{name}.sha256").write_text(f"{sha256}  {name}\n")
    return sha256


# ----------------------------------------------------------------------------------------------------
# appliance images


GUEST_PAYLOAD = "/run/fl-payload"
GUEST_FACTS = "/run/fl-facts"


def _payload(work: Path, variant: Variant, params_text: str, package: onecontext.OneContextPackage) -> Path:
    """The payload in the layout the Packer build uploads (factory/images/hcl.py), plus the hygiene scripts
    and the one-context package built from source."""
    payload = work / "payload"
    (payload / "params").mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PROVISION_DIR, payload / "provision", ignore=ignore)
    shutil.copytree(CONTEXT_DIR / "appliance", payload / "appliance", ignore=ignore)
    shutil.copytree(APPS_DIR, payload / "apps", ignore=ignore)  # as the Packer payload (hcl.py)
    shutil.copytree(MONITORING_DIR, payload / "monitoring", ignore=ignore)
    (payload / "one-context").mkdir()
    shutil.copy2(package.deb, payload / "one-context" / package.deb.name)
    (payload / "params" / f"params-{variant.role}.sh").write_text(params_text)
    (payload / "hygiene").mkdir()
    for name in HYGIENE_SCRIPTS:
        shutil.copy2(PACKER_DIR / "scripts" / name, payload / "hygiene" / name)
    return payload


def _nspawn_argv(
    rootfs: Path, payload: Path, environment: dict[str, str], script: str, facts: Path | None = None
) -> list[str]:
    """systemd-nspawn running ``script`` in ``rootfs`` without booting, the payload at GUEST_PAYLOAD."""
    machine = f"fl-wt-appliance-build-{os.getpid()}"
    argv = [
        "systemd-nspawn",
        "--quiet",
        "--register=no",
        "--keep-unit",
        "--as-pid2",
        f"--machine={machine}",
        f"--directory={rootfs}",
        f"--bind-ro={payload}:{GUEST_PAYLOAD}",
    ]
    if facts is not None:
        argv += [f"--bind={facts}:{GUEST_FACTS}"]
    if HOST_CA_BUNDLE.exists():
        argv += [f"--bind-ro={HOST_CA_BUNDLE}:/run/fl-host-ca.pem"]
        trust = "/run/fl-host-ca.pem"
        environment = environment | {"PIP_CERT": trust, "SSL_CERT_FILE": trust}
    argv += [f"--setenv={key}={value}" for key, value in sorted(environment.items())]
    return [*argv, "/bin/bash", "-c", script]


def _steps_script(steps: Iterable[str], hygiene: bool) -> str:
    """The shell run in the build container: the named provisioning steps in order, then (``hygiene``)
    collect-facts.sh and sysprep.sh."""
    lines = ["set -euo pipefail"]
    for step in steps:
        lines.append(f'echo "==> {step}"; bash {GUEST_PAYLOAD}/provision/{step}')
    if hygiene:
        lines += [
            'echo "==> collect-facts.sh"',
            f"FL_FACTS={GUEST_FACTS} bash {GUEST_PAYLOAD}/hygiene/collect-facts.sh",
            'echo "==> sysprep.sh"',
            f"bash {GUEST_PAYLOAD}/hygiene/sysprep.sh",
        ]
    return "\n".join(lines) + "\n"


def provision_rootfs(
    rootfs: Path,
    variant: Variant,
    payload: Path,
    facts: Path,
    log: Path,
    progress: Progress,
    steps: Iterable[str] | None = None,
) -> None:
    """Run the provisioning scripts (``steps``, default all of them), collect-facts.sh and sysprep.sh
    inside ``rootfs`` with systemd-nspawn (no boot), in the order and with the environment of the Packer
    build."""
    environment = variant.provision_env(payload=GUEST_PAYLOAD, build_target="chroot")
    if steps is None:
        steps = [step.name for step in provisioning_steps(PROVISION_DIR)]
    argv = _nspawn_argv(rootfs, payload, environment, _steps_script(steps, hygiene=True), facts)
    _run_logged(argv, log, progress, variant.name, env=build_environment())


def layer_directory(layer: Layer) -> Path:
    return images_cache() / "layers" / f"{LOCAL_OS}-{layer.label}"


def _layer_payload(work: Path, layer: Layer, package: onecontext.OneContextPackage) -> Path:
    """What a layer's container sees: ``provision/lib``, the layer's own steps and one-context: exactly
    the inputs of its key."""
    payload = work / "payload"
    shutil.copytree(
        PROVISION_DIR / "lib", payload / "provision" / "lib", ignore=shutil.ignore_patterns("__pycache__")
    )
    for step in layer.steps:
        shutil.copy2(step, payload / "provision" / step.name)
    (payload / "one-context").mkdir()
    shutil.copy2(package.deb, payload / "one-context" / package.deb.name)
    return payload


def build_layers(
    variant: Variant,
    base: BaseRootfs,
    package: onecontext.OneContextPackage,
    progress: Progress = DEFAULT,
    force: bool = False,
    timings: BuildTimings = SESSION,
) -> tuple[Layer, ...]:
    """Build (or reuse) the variant's intermediate layers (system, runtime), each from its parent's root
    filesystem; the last one's ``rootfs`` is where the role layer starts."""
    environment = variant.provision_env(payload=GUEST_PAYLOAD, build_target="chroot")
    parts = [package.commit, package.source_digest, package.version]
    layers = plan_layers(environment, base.key, PROVISION_DIR, parts, BUILDER_VERSION)
    parent = base.rootfs
    for layer in layers:
        started = time.monotonic()
        steps = " ".join(step.name for step in layer.steps) or "no steps"

        def fill(work: Path, layer: Layer = layer, parent: Path = parent, steps: str = steps) -> str:
            with progress.stage(f"{variant.name}: {layer.name} layer ({steps})"):
                _copy_tree(parent, work / "rootfs")
                payload = _layer_payload(work, layer, package)
                script = _steps_script([step.name for step in layer.steps], hygiene=False)
                argv = _nspawn_argv(work / "rootfs", payload, dict(layer.environment), script)
                what = f"{variant.name} ({layer.name} layer)"
                _run_logged(argv, work / "build.log", progress, what, env=build_environment())
                _remove_tree(payload)
            record = {"layer": layer.name, "key": layer.key, "parent": layer.parent_key, "steps": steps}
            (work / "layer.json").write_text(
                json.dumps(record | {"environment": layer.environment}, indent=2)
            )
            return layer.key

        # --force rebuilds a layer once per run, not once per variant that shares it
        again = force and not timings.seen(EntryKind.LAYER, layer.key, Outcome.BUILT)
        reused = _cache_entry(layer_directory(layer), f"layer-{layer.label}", again, fill)
        seconds = time.monotonic() - started
        timings.record(EntryKind.LAYER, layer.name, variant.name, layer.key, reused, seconds)
        verb = "reusing" if reused else f"built in {seconds:.0f} s:"
        progress.line(f"{variant.name}: {layer.name} layer {verb} {layer_directory(layer)}")
        parent = layer_directory(layer) / "rootfs"
    return layers


def appliance_directory(variant: Variant, key: str) -> Path:
    return images_cache() / "appliances" / f"{variant.name}-{key[:16]}"


def build_appliance(
    variant: Variant,
    params_text: str | None = None,
    progress: Progress = DEFAULT,
    force: bool = False,
    layered: bool = True,
    timings: BuildTimings = SESSION,
    force_layers: bool | None = None,
) -> Image:
    """Build (or reuse) the raw ext4 appliance image of a debian12 variant, and its manifest.

    ``params_text`` is the in-guest parameter declaration of the role (default: generated from
    images/params.yaml by factory/model/params.py). ``layered`` (the default) starts from the variant's
    cached runtime layer (``build_layers``) and runs only the role layer's steps; otherwise every step runs
    on a copy of the base (the same files: tests/appliance/test_layers_equivalence.py). ``force`` rebuilds
    the image and, unless ``force_layers`` says otherwise, its layers. What was built or reused, and how
    long it took, goes into ``timings``.
    """
    from factory.model import params as params_module

    check_buildable(variant)
    if params_text is None:
        params_text = params_module.guest_defaults(variant.role)
    package = onecontext.build_package()  # first: a missing upstream source fails before any work
    base = build_base(progress, timings=timings)
    started = time.monotonic()
    key = appliance_key(variant, base, params_text, package)
    directory = appliance_directory(variant, key)
    image = directory / f"{variant.name}.img"
    layers: tuple[Layer, ...] = ()
    layer_seconds = 0.0  # recorded as the layers' own entries, so not counted again in the image's

    def fill(work: Path) -> str:
        nonlocal layers, layer_seconds
        if layered:
            again = force if force_layers is None else force_layers
            layers_started = time.monotonic()
            layers = build_layers(variant, base, package, progress, again, timings)
            layer_seconds = time.monotonic() - layers_started
        source = Source(base, layers)
        _make_appliance(work, image.name, variant, source, key, params_text, package, progress)
        return key

    reused = _cache_entry(directory, f"{variant.name}-{key[:16]}", force, fill)
    seconds = time.monotonic() - started
    timings.record(EntryKind.IMAGE, variant.name, variant.name, key, reused, seconds - layer_seconds)
    built = Image.beside(variant.name, image, ImageFormat.RAW, key=key, reused=reused)
    if reused:
        progress.line(f"{variant.name}: reusing {image} (unchanged inputs, key {key[:16]})")
        return built
    progress.line(f"{variant.name}: built {image} in {seconds:.0f} s")
    return dataclasses.replace(built, seconds=seconds)


@dataclass(frozen=True)
class Source:
    """Where an appliance build starts: the base, or the last of its intermediate layers."""

    base: BaseRootfs
    layers: tuple[Layer, ...] = ()

    @property
    def rootfs(self) -> Path:
        return layer_directory(self.layers[-1]) / "rootfs" if self.layers else self.base.rootfs

    @property
    def steps(self) -> list[str]:
        """The provisioning steps still to run on it."""
        steps = provisioning_steps(PROVISION_DIR)
        remaining = split_steps(steps)[LayerName.ROLE] if self.layers else steps
        return [step.name for step in remaining]


def _make_appliance(
    work: Path,
    name: str,
    variant: Variant,
    source: Source,
    key: str,
    params_text: str,
    package: onecontext.OneContextPackage,
    progress: Progress,
) -> None:
    """Copy the source root filesystem, provision it in systemd-nspawn, write ``work/<name>`` and its
    manifest."""
    from hostkit import diskimage

    started = time.monotonic()
    rootfs = work / "rootfs"
    facts = work / "facts"
    facts.mkdir()
    origin = f"{source.layers[-1].name} layer" if source.layers else f"{LOCAL_OS} base"
    with progress.stage(f"{variant.name}: copy the {origin}"):
        _copy_tree(source.rootfs, rootfs)
    payload = _payload(work, variant, params_text, package)
    with progress.stage(f"{variant.name}: provisioning ({' '.join(source.steps)}), facts and hygiene"):
        provision_rootfs(rootfs, variant, payload, facts, work / "build.log", progress, source.steps)
    with progress.stage(f"{variant.name}: raw ext4 image"):
        diskimage.make_ext4_image(rootfs, work / name)
    _remove_tree(rootfs)
    _remove_tree(payload)
    manifest = manifest_module.build_manifest(
        work / name,
        variant.as_dict(),
        manifest_module.parse_os_release((facts / "os-release").read_text()),
        manifest_module.parse_facts((facts / "facts.env").read_text()),
        tool="localbuild-nspawn",
    )
    manifest["build"] |= {
        "key": key,
        "base_key": source.base.key,
        "layers": {str(layer.name): layer.key for layer in source.layers},
        "seconds": round(time.monotonic() - started),
        "one_context": package.record(),
    }
    manifest_module.write_manifest(work / name, manifest)


# ----------------------------------------------------------------------------------------------------
# the qcow2 through a real `packer build` (slow without KVM: opt-in)


def build_qcow2(variant: Variant, progress: Progress = DEFAULT, force: bool = False) -> Image:
    """The variant's qcow2 from a real ``packer build`` of its rendered debian12 HCL, started from the
    local base qcow2. Cached by content (the appliance key plus the base qcow2's checksum)."""
    from factory.images.hcl import render_variant
    from factory.images.packer import build_variant, plan_build
    from factory.model import params as params_module
    from factory.model.matrix import load_matrix

    check_buildable(variant)
    params_text = params_module.guest_defaults(variant.role)
    base_qcow2 = build_base_qcow2(progress)
    base_sha256 = (base_qcow2.parent / f"{base_qcow2.name}.sha256").read_text().split()[0]
    package = onecontext.build_package()
    key = qcow2_key(appliance_key(variant, base_rootfs(), params_text, package), base_sha256)
    directory = qcow2_directory(variant, key)
    seconds = 0.0

    def fill(work: Path) -> str:
        nonlocal seconds
        render_variant(load_matrix(), variant)
        overrides = {"base_image_url": f"file://{base_qcow2}", "base_image_checksum": f"sha256:{base_sha256}"}
        result = build_variant(plan_build(variant, overrides), progress=progress)
        seconds = result.seconds
        try:
            os.link(result.image, work / result.image.name)
        except OSError:
            shutil.copy2(result.image, work / result.image.name)
        # The base qcow2 brought one-context: record which source it was built from, as the
        # container images' manifests do.
        built = dict(result.manifest)
        built.setdefault("build", {})["one_context"] = package.record()
        (work / result.manifest_path.name).write_text(json.dumps(built, indent=2, sort_keys=True) + "\n")
        return key

    reused = _cache_entry(directory, f"qcow2-{variant.name}-{key[:16]}", force, fill)
    if reused:
        progress.line(f"{variant.name}: reusing {directory / variant.name}.qcow2 (unchanged inputs)")
    image = directory / f"{variant.name}.qcow2"
    return Image.beside(variant.name, image, ImageFormat.QCOW2, key=key, reused=reused, seconds=seconds)
