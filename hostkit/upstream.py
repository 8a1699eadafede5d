"""Upstream files the tests and the local builds read (OpenNebula's Ruby CLI, OCA and XSDs, one-apps'
``context-linux``, the marketplace's ``app2`` and yamllint config), found through one setting and never
copied into the project.

    from hostkit import upstream
    upstream.path("one", "share/doc/xsd")   # the folder, or UpstreamMissing: one message saying how to get it
    upstream.missing("one")                  # None, or that message
    python -m hostkit.upstream fetch         # what scripts/setup.sh runs where no upstream folder exists

Where (``hostkit.paths.UPSTREAM_DIR``): ``$ONE_UPSTREAM_DIR``; else ``../shared/upstream`` beside the
repository where it exists; else ``.cache/upstream`` in the repository, which ``fetch`` fills from the GitHub
archives of the commits pinned in ``upstream-pins.json``. A fetched tree is taken only when its files hash
to the pinned sha256 (``tree_digest``); otherwise nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hostkit.errors import ConfigError, FactoryError
from hostkit.fileio import replace_directory, write_atomic
from hostkit.paths import FETCHED_UPSTREAM_DIR, UPSTREAM_DIR

SETTING = "ONE_UPSTREAM_DIR"
PINS_FILE = Path(__file__).with_name("upstream-pins.json")
ARCHIVE_URL = "https://github.com/{repository}/archive/{commit}.tar.gz"
STAMP = ".pinned"  # in a fetched tree: "<commit> <sha256>"


class UpstreamMissing(ConfigError):
    """An upstream file the caller needs is absent; the message names the setting and how to get it."""

    def __init__(self, reason: str, wanted: Path) -> None:
        super().__init__(SETTING, "", reason)
        self.wanted = wanted


@dataclass(frozen=True)
class Pin:
    name: str  # the folder under UPSTREAM_DIR
    repository: str
    commit: str
    paths: tuple[str, ...]
    sha256: str


def pins() -> dict[str, Pin]:
    data = json.loads(PINS_FILE.read_text())
    return {
        name: Pin(name, entry["repository"], entry["commit"], tuple(entry["paths"]), entry["sha256"])
        for name, entry in data.items()
        if not name.startswith("$")
    }


def how_to_get(root: Path = UPSTREAM_DIR) -> str:
    return (
        f"set {SETTING} to a folder laid out as ../shared/upstream (one/, one-apps/, appmarket-simple/, "
        f"marketplace/; now {root}), or run scripts/setup.sh on a machine that reaches github.com: it "
        f"fetches the commits pinned in hostkit/upstream-pins.json into {FETCHED_UPSTREAM_DIR} and checks "
        "their sha256"
    )


def missing(name: str, *parts: str, root: Path = UPSTREAM_DIR) -> str | None:
    """Why ``root/name/parts`` cannot be used (None when it exists): one message naming the setting."""
    wanted = root.joinpath(name, *parts)
    if wanted.exists():
        return None
    return f"upstream files missing: {wanted} not found. To get them, {how_to_get(root)}"


def path(name: str, *parts: str, root: Path = UPSTREAM_DIR) -> Path:
    reason = missing(name, *parts, root=root)
    if reason is not None:
        raise UpstreamMissing(reason, root.joinpath(name, *parts))
    return root.joinpath(name, *parts)


def marketplace_sample(name: str, root: Path = UPSTREAM_DIR) -> Path:
    """An appliance file of OpenNebula's marketplace, kept beside the pinned trees (``root/../samples/
    marketplace``, the layout of ../shared). No pin names its commit and path yet, so ``fetch`` cannot get
    it: UpstreamMissing says where to put it."""
    sample = root.parent / "samples" / "marketplace" / name
    if not sample.is_file():
        raise UpstreamMissing(
            f"upstream files missing: {sample} not found (a marketplace appliance file, not fetched by "
            f"scripts/setup.sh). To get it, {how_to_get(root)}, and put the marketplace sample there",
            sample,
        )
    return sample


def tree_digest(base: Path, paths: tuple[str, ...]) -> str:
    """sha256 over the files of ``paths`` under ``base``: each relative path and content, sorted by path."""
    files: list[Path] = []
    for relative in paths:
        target = base / relative
        if target.is_file():
            files.append(target)
        elif target.is_dir():
            files += [f for f in target.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        else:
            raise FactoryError(f"{target}: not in the archive")
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.relative_to(base).as_posix()):
        name = file.relative_to(base).as_posix().encode()
        content = file.read_bytes()
        digest.update(len(name).to_bytes(8, "big") + name + len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def _extract(archive: Path, pin: Pin, out: Path) -> None:
    """The pinned paths of a GitHub archive (one top folder ``<repo>-<commit>/``) into ``out``."""
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            inner = PurePosixPath(*PurePosixPath(member.name).parts[1:])
            if any(inner == PurePosixPath(p) or PurePosixPath(p) in inner.parents for p in pin.paths):
                member.name = str(inner)
                members.append(member)
        tar.extractall(out, members=members, filter="data")


def fetch_one(pin: Pin, target: Path, url_template: str = ARCHIVE_URL) -> bool:
    """Fetch ``pin`` into ``target/pin.name`` unless it is there already; True when it fetched."""
    destination = target / pin.name
    stamp = f"{pin.commit} {pin.sha256}\n"
    if (destination / STAMP).is_file() and (destination / STAMP).read_text() == stamp:
        return False
    url = url_template.format(repository=pin.repository, commit=pin.commit)
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=f".fetch-{pin.name}-") as work:
        archive = Path(work) / "archive.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=120) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
            staging = Path(work) / pin.name
            _extract(archive, pin, staging)
        except (OSError, tarfile.TarError) as error:
            raise FactoryError(f"{pin.name}: could not fetch {url}: {error}") from None
        got = tree_digest(staging, pin.paths)
        if got != pin.sha256:
            raise FactoryError(
                f"{pin.name}: the files of {url} have sha256 {got}, hostkit/upstream-pins.json pins "
                f"{pin.sha256}: refused, nothing written"
            )
        write_atomic(staging / STAMP, stamp)
        replace_directory(staging, destination)
    return True


def fetch(target: Path = FETCHED_UPSTREAM_DIR, url_template: str = ARCHIVE_URL) -> list[str]:
    """Fetch every pin not yet in ``target``; the names fetched."""
    return [pin.name for pin in pins().values() if fetch_one(pin, target, url_template)]


def main(argv: list[str]) -> int:
    if argv != ["fetch"]:
        print("usage: python -m hostkit.upstream fetch", file=sys.stderr)
        return 2
    if UPSTREAM_DIR != FETCHED_UPSTREAM_DIR:
        print(f"upstream: using {UPSTREAM_DIR} ({SETTING} or ../shared/upstream); nothing to fetch")
        return 0
    try:
        fetched = fetch()
    except FactoryError as error:
        print(f"upstream: {error}", file=sys.stderr)
        return 1
    print(f"upstream: {', '.join(fetched) or 'all pins already'} in {FETCHED_UPSTREAM_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
