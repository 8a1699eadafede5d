"""Delivering a VM's context: a CONTEXT-labelled ISO (qemu) or a read-only ``/context`` directory.

The core decides *what* the context holds (``ContextSpec.files``: ``context.sh``, ``token.txt``, FILES_DS
files); this module only writes it where a guest's one-context finds it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path, PurePosixPath

from testcloud.drivers.base import ContextSpec
from testcloud.drivers.errors import DriverError


def _checked_name(name: str) -> str:
    """File names inside the context must be plain names: no directories, no traversal."""
    path = PurePosixPath(name)
    if len(path.parts) != 1 or name in (".", "..") or name.startswith(".") or "\0" in name:
        raise DriverError(f"context file name {name!r} is not a plain file name")
    return name


def write_context_directory(context: ContextSpec, directory: Path) -> None:
    """Make ``directory`` hold exactly ``context.files``, readable by root only (files 0400 in a 0700
    directory): ``token.txt`` is the VM's OneGate credential and ``context.sh`` may carry private keys
    (``ONEAPP_FL_SSL_KEY``), so no unprivileged process of the guest (a Flower ServerApp/ClientApp run as the
    ``flower`` user) may read them, as with one-context, whose CONTEXT CD only root mounts. Each file is
    replaced by a rename, so a guest watching the directory never reads a half-written file, and a bind mount
    of the directory stays valid."""
    names = {_checked_name(name) for name in context.files}
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for name, content in context.files.items():
        temporary = directory / f".{name}.new"
        temporary.unlink(missing_ok=True)
        # created 0400: never readable by others, not even for a moment
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
        temporary.chmod(0o400)  # whatever the umask took away
        os.replace(temporary, directory / name)
    for stale in directory.iterdir():
        if stale.name not in names:
            stale.unlink()
    # The guest watches context.sh: touch it last so the change is seen once everything else is in place.
    if "context.sh" in names:
        os.utime(directory / "context.sh")


def write_context_iso(context: ContextSpec, destination: Path) -> Path:
    """Write an ISO 9660 image (Joliet + Rock Ridge) labelled ``context.label`` holding the context files."""
    for name in context.files:
        _checked_name(name)
    staging = destination.with_name(f".{destination.name}.files")
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_context_directory(context, staging)
        argv = [
            "xorriso",
            "-as",
            "mkisofs",
            "-V",
            context.label,
            "-J",
            "-R",
            "-quiet",
            "-o",
            str(partial),
            str(staging),
        ]
        completed = subprocess.run(argv, capture_output=True, text=True)
        if completed.returncode != 0:
            raise DriverError(f"{destination}: xorriso failed: {completed.stderr.strip()[-1000:]}")
        os.replace(partial, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        partial.unlink(missing_ok=True)
    return destination
