"""OpenNebula's one-context package for the local Debian 12 images, built from upstream source.

The released .deb cannot be downloaded on the build machines (only the Debian archive and PyPI can be
reached), so the local builder makes the same package from one-apps' ``context-linux`` at a pinned
commit, read from ``UPSTREAM_DIR/one-apps/context-linux`` (setting ``ONE_UPSTREAM_DIR``, see
``hostkit/upstream.py``), never copied into the project:

- the file tree comes from upstream's own ``generate.sh`` (``TARGET=deb TYPE=dir``): the files tagged for
  the ``deb`` target, exactly what its fpm run packs;
- the package metadata comes from upstream's ``targets.sh`` (``deb``: name, Depends, Replaces, Conflicts)
  and its maintainer scripts are upstream's ``pkg/postinstall``, ``pkg/preuninstall`` and
  ``pkg/postuninstall`` (what fpm's ``--after-install``/``--before-remove``/``--after-remove`` attach);
- ``dpkg-deb`` writes the .deb, which the provisioning installs with apt like the released one (its
  dependencies, its postinst: units enabled, network configuration reset).

The result is cached by content (the upstream tree's digest) under ``CACHE_DIR/one-context``.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hostkit import upstream
from hostkit.errors import ConfigError, FactoryError
from hostkit.paths import CACHE_DIR, UPSTREAM_DIR

SETTING = upstream.SETTING
# The pinned upstream source: OpenNebula/one-apps, context-linux/ at this commit (hostkit/upstream-pins.json
# and, in a shared folder, the row of its README.md must name the same commit).
SOURCE_REPOSITORY = "OpenNebula/one-apps"
SOURCE_COMMIT = "ae5a43e411bde941f46b1e8e314eccf5c7a327b2"
# The version one-apps' Makefile.config passes to generate.sh (VERSION := 7.0.0); the release names the
# commit, as generate.sh does for an untagged checkout (0.<date>git<short commit>).
PACKAGE_VERSION = "7.0.0"
PACKAGE_RELEASE = f"0.git{SOURCE_COMMIT[:7]}"
BUILDER_VERSION = "1"
MAINTAINER_SCRIPTS = {"postinst": "postinstall", "prerm": "preuninstall", "postrm": "postuninstall"}


@dataclass(frozen=True)
class OneContextPackage:
    deb: Path
    version: str  # the Debian package version, e.g. 7.0.0-0.gitae5a43e
    commit: str
    source: Path
    source_digest: str

    def record(self) -> dict[str, str]:
        """What the image manifest records about the package it installed."""
        return {
            "package": self.deb.name,
            "version": self.version,
            "repository": SOURCE_REPOSITORY,
            "path": "context-linux",
            "commit": self.commit,
            "source_sha256": self.source_digest,
        }


def source_dir() -> Path:
    return UPSTREAM_DIR / "one-apps" / "context-linux"


def missing_reason() -> str | None:
    """Why the upstream source cannot be used (None when it can): the one message of hostkit.upstream."""
    for needed in ("generate.sh", "targets.sh", "src", "pkg/postinstall"):
        reason = upstream.missing("one-apps", "context-linux", needed, root=UPSTREAM_DIR)
        if reason is not None:
            return reason
    return None


def pinned_commit() -> str:
    """The commit of one-apps context-linux, checked against the factory's pin: the pins file, and the
    tree's own record (README.md row of a shared folder, or the stamp of a fetched one)."""
    pin = upstream.pins()["one-apps"]
    if pin.commit != SOURCE_COMMIT:
        raise ConfigError(
            str(upstream.PINS_FILE), "one-apps", f"commit {pin.commit} but onecontext pins {SOURCE_COMMIT}"
        )
    stamp = UPSTREAM_DIR / "one-apps" / upstream.STAMP
    if stamp.is_file():
        recorded = stamp.read_text().split()[:1]
        if recorded != [SOURCE_COMMIT]:
            raise ConfigError(str(stamp), "commit", f"{recorded} but the factory pins {SOURCE_COMMIT}")
        return SOURCE_COMMIT
    readme = UPSTREAM_DIR / "README.md"
    try:
        text = readme.read_text()
    except OSError as error:
        reason = f"unreadable ({error.strerror}); {upstream.how_to_get()}"
        raise ConfigError(str(readme), "", reason) from None
    for line in text.splitlines():
        if line.startswith("|") and "one-apps/context-linux" in line:
            found = re.search(r"\b[0-9a-f]{40}\b", line)
            if found:
                if found.group(0) != SOURCE_COMMIT:
                    raise ConfigError(
                        str(readme),
                        "one-apps/context-linux",
                        f"commit {found.group(0)} but the factory pins {SOURCE_COMMIT} "
                        "(hostkit/onecontext.py SOURCE_COMMIT)",
                    )
                return found.group(0)
    raise ConfigError(str(readme), "one-apps/context-linux", "no row naming its commit")


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix().encode()
        mode = b"x" if os.access(path, os.X_OK) else b"-"
        digest.update(len(relative).to_bytes(8, "big") + relative + mode)
        content = path.read_bytes()
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def _target_fields(source: Path) -> dict[str, str]:
    """NAME, DEPENDS, REPLACES, CONFLICTS, PROVIDES of upstream's ``deb`` target (targets.sh)."""
    script = (
        "set -e; TARGET=deb; . ./targets.sh; "
        'printf "%s\\n" "NAME=${NAME}" "DEPENDS=${DEPENDS}" "REPLACES=${REPLACES}" '
        '"CONFLICTS=${CONFLICTS}" "PROVIDES=${PROVIDES}"'
    )
    completed = subprocess.run(["bash", "-c", script], cwd=source, capture_output=True, text=True)
    if completed.returncode != 0:
        raise FactoryError(f"{source}/targets.sh (TARGET=deb) failed: {completed.stderr.strip()[-500:]}")
    fields = dict(line.split("=", 1) for line in completed.stdout.splitlines() if "=" in line)
    if not fields.get("NAME"):
        raise FactoryError(f"{source}/targets.sh gives no package NAME for TARGET=deb")
    return fields


def _control(fields: dict[str, str], version: str, installed_kib: int) -> str:
    def relation(words: str) -> str:  # fpm: one --depends per word; "a|b" is an alternative
        return ", ".join(word.replace("|", " | ") for word in words.split())

    lines = [
        f"Package: {fields['NAME']}",
        f"Version: {version}",
        "Architecture: all",
        "Maintainer: OpenNebula Systems <contact@opennebula.io>",
        f"Installed-Size: {installed_kib}",
    ]
    for key, name in (("Depends", "DEPENDS"), ("Conflicts", "CONFLICTS"), ("Replaces", "REPLACES")):
        if fields.get(name, "").strip():
            lines.append(f"{key}: {relation(fields[name])}")
    if fields.get("PROVIDES", "").strip():
        lines.append(f"Provides: {relation(fields['PROVIDES'])}")
    lines += [
        "Section: admin",
        "Priority: optional",
        "Homepage: http://opennebula.org",
        "Description: OpenNebula Contextualization Package",
        f" Built from {SOURCE_REPOSITORY} context-linux at {SOURCE_COMMIT} by the Flower factory",
        " (generate.sh TARGET=deb TYPE=dir, metadata from targets.sh).",
    ]
    return "\n".join(lines) + "\n"


def _build(source: Path, out_deb: Path, work: Path) -> None:
    tree = work / "root"
    environment = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "HOME": str(work),
        "TMPDIR": str(work),
        "LC_ALL": "C",
        "TARGET": "deb",
        "TYPE": "dir",
        "VERSION": PACKAGE_VERSION,
        "RELEASE": PACKAGE_RELEASE,
        "OUT": str(tree),
    }
    completed = subprocess.run(
        ["bash", str(source / "generate.sh")], cwd=source, env=environment, capture_output=True, text=True
    )
    if completed.returncode != 0 or not (tree / "usr" / "sbin" / "one-contextd").is_file():
        detail = (completed.stderr or completed.stdout).strip()[-1000:]
        raise FactoryError(f"one-context: {source}/generate.sh TARGET=deb TYPE=dir failed: {detail}")
    # The shared copy of the source is read-only; the repository's files are 0644/0755 (owner-writable).
    for path in tree.rglob("*"):
        if path.is_file():
            path.chmod(path.stat().st_mode | 0o200)
    # generate.sh sets onesysprep's version only on its fpm path; do the same here.
    onesysprep = tree / "usr" / "sbin" / "onesysprep"
    if onesysprep.is_file():
        onesysprep.write_text(re.sub(r"\b_PACKAGE_VERSION_\b", PACKAGE_VERSION, onesysprep.read_text()))
    fields = _target_fields(source)
    control_dir = tree / "DEBIAN"
    control_dir.mkdir()
    size = sum(path.stat().st_size for path in tree.rglob("*") if path.is_file())
    version = f"{PACKAGE_VERSION}-{PACKAGE_RELEASE}"
    (control_dir / "control").write_text(_control(fields, version, max(1, size // 1024)))
    for script, packaged in MAINTAINER_SCRIPTS.items():
        target = control_dir / script
        shutil.copyfile(source / "pkg" / packaged, target)
        target.chmod(0o755)
    # fpm marks every file under etc/ but the context scripts and init files as a conffile
    # (generate.sh, CONFIG_FILES).
    conffiles = sorted(
        "/" + path.relative_to(tree).as_posix()
        for path in (tree / "etc").rglob("*")
        if path.is_file()
        and not path.relative_to(tree).as_posix().startswith(("etc/one-context.d/", "etc/init"))
    )
    if conffiles:
        (control_dir / "conffiles").write_text("\n".join(conffiles) + "\n")
    completed = subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(out_deb)],
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise FactoryError(f"one-context: dpkg-deb failed: {completed.stderr.strip()[-1000:]}")


def build_package() -> OneContextPackage:
    """The one-context .deb built from the pinned upstream source (cached by content).

    Raises ConfigError naming ONE_UPSTREAM_DIR when the source is absent."""
    reason = missing_reason()
    if reason is not None:
        raise upstream.UpstreamMissing(reason, source_dir())
    commit = pinned_commit()
    source = source_dir()
    digest = _tree_digest(source)
    key = hashlib.sha256(f"{BUILDER_VERSION}:{commit}:{digest}".encode()).hexdigest()[:16]
    version = f"{PACKAGE_VERSION}-{PACKAGE_RELEASE}"
    directory = CACHE_DIR / "one-context" / key
    deb = directory / f"one-context_{version}_all.deb"
    if (directory / ".complete").exists():
        return OneContextPackage(deb, version, commit, source, digest)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / ".complete").exists():
            work = directory.parent / f".build-{key}-{os.getpid()}-{time.monotonic_ns()}"
            work.mkdir()
            try:
                _build(source, work / deb.name, work)
                shutil.rmtree(work / "root")
                (work / ".complete").write_text(f"{commit} {digest}\n")
                shutil.rmtree(directory, ignore_errors=True)
                work.rename(directory)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return OneContextPackage(deb, version, commit, source, digest)
