"""Version and requirement rules of the model, read with PEP 440 / PEP 508 as pip reads them
(``packaging``, the library pip vendors), not with regular expressions.

- a Flower axis value is a final release written as X.Y.Z (``1.42.0``; not ``1.42``, ``1.42.0rc1``,
  ``v1.42.0``);
- a framework package is pinned to one version (``torch==2.5.1``, ``tensorflow[and-cuda]==2.21.0``);
- an OS's Python is a 3.N series (``3.11``).
"""

from __future__ import annotations

from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def is_release_version(text: str) -> bool:
    """``text`` is a final X.Y.Z release exactly as written (no pre/post/dev/local part, no epoch)."""
    version = _version(text)
    return (
        version is not None
        and len(version.release) == 3
        and not (version.is_prerelease or version.is_postrelease or version.local or version.epoch)
        and str(version) == text
    )


def is_python_series(text: str) -> bool:
    """``text`` names a Python 3 minor series as ``3.N``."""
    version = _version(text)
    return (
        version is not None
        and version.release[:1] == (3,)
        and len(version.release) == 2
        and str(version) == text
    )


def is_pinned(text: str) -> bool:
    """``text`` is a requirement pinned to exactly one ``==`` version (extras allowed; no marker, URL)."""
    try:
        requirement = Requirement(text)
    except InvalidRequirement:
        return False
    specifiers = list(requirement.specifier)
    return (
        len(specifiers) == 1
        and specifiers[0].operator == "=="
        and "*" not in specifiers[0].version
        and not (requirement.marker or requirement.url)
        and " " not in text
    )


def latest(versions: Iterable[str]) -> str:
    """The highest final X.Y.Z release among ``versions`` by PEP 440 order; "none" when there is none."""
    finals = [text for text in versions if is_release_version(text)]
    return max(finals, key=Version) if finals else "none"
