"""Upstream files through one setting (hostkit/upstream.py): the pins match the upstream folder in use, a
fetched archive is taken only when its files hash to the pin, and a missing file gives one message."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from hostkit import upstream
from hostkit.errors import FactoryError
from hostkit.paths import UPSTREAM_DIR

PIN = upstream.pins()["marketplace"]


def _archive(tmp_path: Path, content: bytes) -> str:
    """A GitHub-like archive (one top folder) holding the marketplace pin's one file; its file:// URL."""
    top = tmp_path / "src" / f"marketplace-{PIN.commit}"
    top.mkdir(parents=True)
    (top / ".yamllint.yml").write_bytes(content)
    (top / "README.md").write_text("not pinned, not extracted\n")
    archive = tmp_path / f"{PIN.commit}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    return f"file://{tmp_path}/{{commit}}.tar.gz"


def test_the_pins_match_the_upstream_folder_in_use() -> None:
    for pin in upstream.pins().values():
        upstream.path(pin.name)  # UpstreamMissing otherwise: the one message
        assert upstream.tree_digest(UPSTREAM_DIR / pin.name, pin.paths) == pin.sha256, pin.name


def test_a_pinned_archive_is_fetched_once(tmp_path: Path) -> None:
    pinned = upstream.path("marketplace", ".yamllint.yml")  # UpstreamMissing (the how-to) where absent
    url = _archive(tmp_path, pinned.read_bytes())
    target = tmp_path / "upstream"
    assert upstream.fetch_one(PIN, target, url) is True
    assert (target / "marketplace" / ".yamllint.yml").read_bytes() == pinned.read_bytes()
    assert not (target / "marketplace" / "README.md").exists()
    assert upstream.fetch_one(PIN, target, url) is False  # the stamp records commit and sha256


def test_an_archive_that_does_not_hash_to_the_pin_is_refused(tmp_path: Path) -> None:
    url = _archive(tmp_path, b"rules: {}\n")
    target = tmp_path / "upstream"
    with pytest.raises(FactoryError) as caught:
        upstream.fetch_one(PIN, target, url)
    assert PIN.sha256 in str(caught.value) and "refused, nothing written" in str(caught.value)
    assert not (target / "marketplace").exists()
    assert [p.name for p in target.iterdir()] == []  # no staging left behind


def test_an_unreachable_archive_names_the_url(tmp_path: Path) -> None:
    with pytest.raises(FactoryError, match="could not fetch file://"):
        upstream.fetch_one(PIN, tmp_path / "upstream", f"file://{tmp_path}/absent-{{commit}}.tar.gz")


def test_a_missing_folder_gives_the_one_message(tmp_path: Path) -> None:
    with pytest.raises(upstream.UpstreamMissing) as caught:
        upstream.path("one", "share", "doc", "xsd", root=tmp_path / "nowhere")
    message = str(caught.value)
    assert message.startswith("ONE_UPSTREAM_DIR: upstream files missing:")
    assert "scripts/setup.sh" in message and "hostkit/upstream-pins.json" in message
