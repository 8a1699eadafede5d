"""The published YAML tree passes the marketplace's own checks, run unchanged: ``app2 validate`` of
OpenNebula/appmarket-simple and yamllint with the OpenNebula/marketplace repository's ``.yamllint.yml``
(both pinned under ``$ONE_UPSTREAM_DIR``, ``hostkit/upstream.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from factory.release.publish import publish
from factory.release.results import write_result
from hostkit import upstream
from hostkit.paths import UPSTREAM_DIR

from .conftest import RUN, make_pair_result

APP2 = UPSTREAM_DIR / "appmarket-simple" / "src" / "app2"
YAMLLINT_CONFIG = UPSTREAM_DIR / "marketplace" / ".yamllint.yml"


@pytest.fixture
def published(tmp_path: Path) -> Path:
    """A published tree of two release pairs (Flower 1.41.0 and 1.42.0): 6 appliances."""
    images = tmp_path / "images"
    images.mkdir()
    root = tmp_path / "results"
    write_result(make_pair_result(images, "1.42.0", "1.42.0"), root)
    write_result(make_pair_result(images, "1.41.0", "1.41.0"), root)
    publish(RUN, cloud=None, release=1, results_root=root)
    return root / RUN / "publish" / "marketplace" / "appliances"


def _app2(directory: Path) -> subprocess.CompletedProcess[str]:
    upstream.path("appmarket-simple", "src", "app2", "app2", "validate.py")  # UpstreamMissing: how to get it
    return subprocess.run(
        [sys.executable, "-m", "app2", "validate", str(directory)],
        cwd=APP2,
        env={"PYTHONPATH": ".", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_app2_validates_the_published_tree(published: Path) -> None:
    yamls = sorted(published.rglob("*.yaml"))
    assert [path.parent.name for path in yamls] == ["service"] * 6  # appliances/service/, as upstream
    result = _app2(published)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated 6 appliance yaml(s): 0 error(s), 0 warning(s)" in result.stdout


def test_app2_catches_a_duplicate_id_and_a_missing_checksum(published: Path) -> None:
    """The check is real: the same tree with one file copied and one checksum dropped fails."""
    first = sorted(published.rglob("*.yaml"))[0]
    text = first.read_text()
    (first.parent / "copy.yaml").write_text(text)
    lines = [line for line in text.splitlines() if not line.strip().startswith("md5:")]
    first.write_text("\n".join(lines) + "\n")
    result = _app2(published)
    assert result.returncode == 1
    assert "also used by" in result.stdout and "missing checksum.md5" in result.stdout


def _yamllint(directory: Path) -> subprocess.CompletedProcess[str]:
    upstream.path("marketplace", ".yamllint.yml")  # UpstreamMissing says how to get it
    return subprocess.run(
        [sys.executable, "-m", "yamllint", "-c", str(YAMLLINT_CONFIG), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_yamllint_with_the_marketplace_config_passes(published: Path) -> None:
    result = _yamllint(published)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_yamllint_reports_what_the_marketplace_config_forbids(published: Path) -> None:
    first = sorted(published.rglob("*.yaml"))[0]
    first.write_text(first.read_text().replace("---\n", "", 1) + "extra:   yes \n")
    result = _yamllint(published)
    assert result.returncode == 1, result.stdout
    assert "trailing-spaces" in result.stdout
