"""The tiny test image the drivers' and the test cloud's tests boot.

Debian 12 minbase + systemd, dbus, openssh-server, curl, iproute2, ping, and OpenNebula's one-context (the
package hostkit/onecontext.py builds from the pinned upstream source, with its dependencies, and
systemd-networkd set up as images/provision/lib/distro.sh does for the appliances), built once with
mmdebstrap into the shared cache (``$FLOWER_FACTORY_CACHE/testcloud/testimage/<key>/``), keyed by
everything that goes into it (package list, customize script, the one-context source), locked so
parallel test workers build it once, and marked complete only when finished.

- :func:`ext4_image`: a raw ext4 filesystem image (the container driver's input), about a minute.
- :func:`qcow2_image`: the same plus a kernel, as a bootable qcow2 (the qemu driver's input;
  opt-in, used by ``image``-marked tests).

``python -m testcloud.drivers.testimage [--qcow2]`` builds (if needed) and prints the path.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from hostkit import diskimage, onecontext
from hostkit.errors import FactoryError
from hostkit.paths import CACHE_DIR, PROVISION_DIR
from hostkit.progress import DEFAULT as PROGRESS

SUITE = "bookworm"
MIRROR = os.environ.get("FLOWER_TESTIMAGE_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd", "dbus", "openssh-server", "curl", "iproute2", "iputils-ping")
KERNEL_PACKAGES = (
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "qemu-guest-agent",
)
CUSTOMIZE = Path(__file__).with_name("testimage-customize.sh")
DISTRO_LIB = PROVISION_DIR / "lib" / "distro.sh"
FILE_MIRROR_HOOKS = Path("/usr/share/mmdebstrap/hooks/file-mirror-automount")
IMAGE_CACHE = CACHE_DIR / "testcloud" / "testimage"
# Left out of the image: documentation and translations (a test image has no use for them).
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")


def _files_digest(base: Path, paths: list[Path]) -> str:
    """Names (relative to ``base``), contents and executable bits of files, in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o111).encode())
    return digest.hexdigest()


def build_key(bootable: bool, package: onecontext.OneContextPackage | None = None) -> str:
    """Content key of an image: changes whenever anything that goes into it changes."""
    package = package or onecontext.build_package()
    recipe = {
        "version": 2,
        "suite": SUITE,
        "packages": sorted(PACKAGES + (KERNEL_PACKAGES if bootable else ())),
        "excludes": EXCLUDES,
        "bootable": bootable,
        "one_context": [package.commit, package.source_digest, package.version],
        "customize": _files_digest(CUSTOMIZE.parent, [CUSTOMIZE]),
        "distro": _files_digest(DISTRO_LIB.parent, [DISTRO_LIB]),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _mmdebstrap(rootfs: Path, packages: tuple[str, ...], deb: Path) -> None:
    hook = f'bash {shlex.quote(str(CUSTOMIZE))} "$1" {shlex.quote(str(DISTRO_LIB))}'
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--quiet",
        f"--include={','.join(packages)}",
        # the local .deb with its dependencies from the archive; the hook makes the file visible inside
        f"--include={deb}",
        f"--hook-dir={FILE_MIRROR_HOOKS}",
        '--aptopt=Acquire::Retries "3"',
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in EXCLUDES),
        f"--customize-hook={hook}",
        SUITE,
        str(rootfs),
        MIRROR,
    ]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    completed = subprocess.run(argv, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip()[-3000:]
        raise FactoryError(f"test image: mmdebstrap failed (exit {completed.returncode}): {detail}")


def _os_release(rootfs: Path) -> dict[str, str]:
    release = {}
    for line in (rootfs / "etc" / "os-release").read_text().splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            release[key] = value.strip('"')
    return release


def _build(bootable: bool) -> Path:
    package = onecontext.build_package()
    key = build_key(bootable, package)
    name = "rootfs.qcow2" if bootable else "rootfs.img"
    entry = IMAGE_CACHE / key
    image = entry / name
    marker = entry / ".complete"
    if marker.exists():
        return image
    IMAGE_CACHE.mkdir(parents=True, exist_ok=True)
    with open(IMAGE_CACHE / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return image
        shutil.rmtree(entry, ignore_errors=True)
        work = IMAGE_CACHE / f".build-{key}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            rootfs = work / "rootfs"
            packages = PACKAGES + (KERNEL_PACKAGES if bootable else ())
            with PROGRESS.stage(f"test image {key}: mmdebstrap {SUITE} ({len(packages)} packages)"):
                _mmdebstrap(rootfs, packages, package.deb)
            staged = work / name
            with PROGRESS.stage(f"test image {key}: {'bootable qcow2' if bootable else 'ext4 image'}"):
                if bootable:
                    diskimage.make_bootable_qcow2(rootfs, staged)
                else:
                    diskimage.make_ext4_image(rootfs, staged)
            info = diskimage.image_info(staged)
            manifest = {
                "key": key,
                "file": name,
                "format": info.format,
                "virtual_size": info.virtual_size,
                **diskimage.checksums(staged),
                "os_release": _os_release(rootfs),
                "packages": list(packages),
                "one_context": package.record(),
            }
            (work / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            shutil.rmtree(rootfs)
            work.rename(entry)
            marker.write_text(key + "\n")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return image


def ext4_image() -> Path:
    """The test image as a raw ext4 filesystem image (built on first use, then cached)."""
    return _build(bootable=False)


def qcow2_image() -> Path:
    """The test image with a kernel, as a bootable qcow2 (built on first use, then cached)."""
    return _build(bootable=True)


def manifest(image: Path) -> dict[str, object]:
    return json.loads((image.parent / "manifest.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testcloud.drivers.testimage", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--qcow2", action="store_true", help="the bootable qcow2 (with a kernel)")
    arguments = parser.parse_args(argv)
    try:
        image = qcow2_image() if arguments.qcow2 else ext4_image()
    except FactoryError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_status
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
