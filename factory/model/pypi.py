"""Is a Flower version real? The ``flwr`` releases on PyPI, asked once per run.

A version that does not exist (``9.9.9``) passes every local check and fails hours later inside an image
build, at ``pip install flwr==9.9.9``. ``validate`` and ``build`` ask PyPI's JSON API
(https://docs.pypi.org/api/json/, ``GET /pypi/<project>/json``: ``releases`` maps each version to its
files) before anything runs. Offline, ``--offline`` or ``FLOWER_FACTORY_OFFLINE=1`` skips the check, and
the command says that it did.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Sequence

from factory.model.versions import latest
from hostkit.errors import ConfigError, FactoryError

PROJECT = "flwr"
JSON_URL = f"https://pypi.org/pypi/{PROJECT}/json"
OFFLINE_ENV = "FLOWER_FACTORY_OFFLINE"
TIMEOUT_S = 20


def offline_requested(flag: bool) -> bool:
    """``--offline`` given, or ``FLOWER_FACTORY_OFFLINE`` set to something other than empty/0/no."""
    value = os.environ.get(OFFLINE_ENV, "").strip().lower()
    return flag or value not in ("", "0", "no", "false")


def releases_from_document(document: object) -> frozenset[str]:
    """The versions of a PyPI JSON document that can be installed: at least one file not yanked."""
    if not isinstance(document, dict) or not isinstance(document.get("releases"), dict):
        raise FactoryError(f"PyPI answered for {PROJECT} without a 'releases' mapping")
    versions = set()
    for version, files in document["releases"].items():
        if isinstance(files, list) and any(isinstance(f, dict) and not f.get("yanked") for f in files):
            versions.add(str(version))
    return frozenset(versions)


@functools.cache
def fetch_releases(url: str = JSON_URL) -> frozenset[str]:
    """The installable ``flwr`` versions on PyPI (cached for the rest of the run)."""
    import requests

    try:
        reply = requests.get(url, timeout=TIMEOUT_S, headers={"Accept": "application/json"})
        reply.raise_for_status()
        document = reply.json()
    except (requests.RequestException, ValueError) as error:
        raise FactoryError(
            f"cannot check the Flower versions against PyPI ({url}: {error}); offline, pass --offline "
            f"or set {OFFLINE_ENV}=1 to skip the check"
        ) from None
    return releases_from_document(document)


def check_versions(
    versions: Sequence[str],
    axis_values: Sequence[str],
    source: str,
    releases: Callable[[], Iterable[str]] | None = None,
) -> None:
    """ConfigError (exit 2) naming the first version of ``versions`` that PyPI does not have;
    ``axis_values`` (matrix axes.flower, in file order) give the field."""
    known = frozenset((releases or fetch_releases)())
    for version in versions:
        if version not in known:
            index = list(axis_values).index(version) if version in axis_values else 0
            raise ConfigError(
                source,
                f"axes.flower[{index}]",
                f"Flower {version} does not exist on PyPI (no installable {PROJECT}=={version}; "
                f"latest release: {latest(known)})",
            )
