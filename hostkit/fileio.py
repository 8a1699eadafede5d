"""Writing generated files without leaving half-written results behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Write ``content`` (text as UTF-8, or bytes) to ``path`` through a temporary file in the same
    directory and a rename: a crash leaves the old file or the new one, never half of one."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written ``staging`` directory to ``target``, replacing what was there."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_directory(path: Path, option: str) -> None:
    """ConfigError (exit 2) unless ``path`` is a directory this process may write in, or one it may
    create: a file in the way, or a nearest existing directory it cannot write in, is named before anything
    is written."""
    from hostkit.errors import ConfigError

    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        if probe == path:
            problem = f"{path} is a file, not a directory"
        else:
            problem = f"{path} cannot be created: {probe} is a file, not a directory"
        raise ConfigError("command line", option, problem)
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == path else f" (nearest existing directory: {probe})"
        raise ConfigError("command line", option, f"{path} is not writable{where}: permission denied")


def output_error(error: OSError, option: str) -> Exception:
    """The ConfigError for an OSError met while writing under a directory given by ``option``."""
    from hostkit.errors import ConfigError

    where = f"{error.filename}: " if error.filename else ""
    return ConfigError("command line", option, f"cannot write {where}{error.strerror or error}")
