"""Host-side Flower installations, one virtualenv per Flower version (and extra packages).

The factory runs the ``flwr`` CLI (``flwr run`` through an SSH tunnel) and bare Flower processes on loopback
(benchmark baselines) from these. They live under ``.cache/flwr/`` and are created on first use from PyPI.
Telemetry and update checks are always off in the environment returned by :func:`flower_environment`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hostkit.errors import FactoryError
from hostkit.paths import CACHE_DIR


@dataclass(frozen=True)
class FlowerEnv:
    """A virtualenv holding ``flwr==version``; ``bin_dir`` has its executables (``flwr``, ``python``, ...)."""

    version: str
    bin_dir: Path

    def executable(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def python(self) -> Path:
        return self.executable("python")


def flower_environment(base: dict[str, str] | None = None, flwr_home: Path | None = None) -> dict[str, str]:
    """Environment for Flower processes: no telemetry, no update check, no runtime installs."""
    environment = dict(os.environ if base is None else base)
    environment.update(
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
    )
    if flwr_home is not None:
        environment["FLWR_HOME"] = str(flwr_home)
    return environment


def ensure_flower(version: str, extra_packages: tuple[str, ...] = (), index_url: str = "") -> FlowerEnv:
    """Return a virtualenv with ``flwr==version`` (plus pinned extras, from PyPI and the extra index
    ``index_url`` where given, as the images install a framework), creating it once.

    Safe to call from parallel test workers: creation holds a lock file and is marked complete only
    after pip succeeded, so a half-made venv is never used.
    """
    extras = tuple(sorted(extra_packages))
    # The key of a venv without an extra index stays what it was: venvs already made are reused.
    spec = " ".join(extras) + (f" --extra-index-url {index_url}" if index_url else "")
    key = version if not spec else f"{version}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"
    root = CACHE_DIR / "flwr" / key
    marker = root / ".complete"
    if marker.exists():
        return FlowerEnv(version, root / "bin")
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return FlowerEnv(version, root / "bin")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        command = [str(root / "bin" / "pip"), "install", "--quiet", f"flwr=={version}", *extras]
        if index_url:
            command += ["--extra-index-url", index_url]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise FactoryError(
                f"could not install flwr=={version} {' '.join(extras)} into {root}: "
                f"{result.stderr.strip()[-2000:]}"
            )
        marker.write_text(version + "\n")
    return FlowerEnv(version, root / "bin")
