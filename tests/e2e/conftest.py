"""Shared fixtures of the end-to-end tests: host Flower venvs (built once, cached) and per-test work dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory.harness.flwrenv import FlowerEnv, ensure_flower
from factory.harness.pair import PASSED, PairResult, Side
from factory.model.manifest import digests

CURRENT = "1.42.0"
PREVIOUS = "1.41.0"
RUN = "20261128-130000"


@pytest.fixture(scope="session")
def flower_current() -> FlowerEnv:
    return ensure_flower(CURRENT)


@pytest.fixture(scope="session")
def flower_previous() -> FlowerEnv:
    return ensure_flower(PREVIOUS)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Short paths: Flower's and OpenSSL's files live here (tmp_path names can be long)."""
    os.chmod(tmp_path, 0o700)
    return tmp_path


def _image(directory: Path, variant: str, content: bytes) -> dict:
    path = directory / f"{variant}.img"
    path.write_bytes(content)
    sha256, md5 = digests(path)
    manifest = {
        "sha256": sha256,
        "md5": md5,
        "format": "raw",
        "size": len(content),
        "virtual_size": len(content),
        "os_release": {"ID": "debian", "VERSION_ID": "12", "NAME": "Debian GNU/Linux"},
    }
    path.with_name(f"{variant}.manifest.json").write_text(json.dumps(manifest))
    return {"path": str(path), **manifest}


def make_pair_result(
    images: Path, link: str, node: str, status: str = PASSED, target: str = "testcloud"
) -> PairResult:
    sides = {}
    for role, version in (("superlink", link), ("supernode", node)):
        variant = f"{role}-{version}-debian12-cpu-standard-sklearn-x86_64"
        sides[role] = Side(
            variant=variant,
            flower=version,
            os="debian12",
            accel="cpu",
            profile="standard",
            framework="sklearn",
            arch="x86_64",
            count=2 if role == "supernode" else 1,
            image=_image(images, variant, variant.encode() * 50),
        )
    return PairResult(
        pair=f"pair-sl{link}-sn{node}-debian12-cpu-standard-sklearn",
        run=RUN,
        target=target,
        security="tls-auth",
        superlink=sides["superlink"],
        supernodes=sides["supernode"],
        status=status,
        error="" if status == PASSED else "all_rounds_finished: rounds reported [1]",
        federations=[{"task": "numpy", "rounds": [{"round": 1}, {"round": 2}]}],
    )


def run_build_py(args: list[str], results: Path) -> subprocess.CompletedProcess:
    """``python build.py ARGS`` as a user runs it, its results and build output under ``results``."""
    from hostkit.paths import REPO_ROOT

    environment = dict(
        os.environ, FLOWER_FACTORY_RESULTS=str(results), FLOWER_FACTORY_BUILD=str(results / "build")
    )
    return subprocess.run(
        [sys.executable, "build.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, env=environment,
        timeout=900, check=False,
    )  # fmt: skip
