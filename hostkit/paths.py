"""Where things live on disk. Every stage takes its directories from here."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

MATRIX_FILE = REPO_ROOT / "matrix.yaml"
IMAGES_DIR = REPO_ROOT / "images"
PARAMS_FILE = IMAGES_DIR / "params.yaml"
PROVISION_DIR = IMAGES_DIR / "provision"
PACKER_DIR = REPO_ROOT / "packer"
CONTEXT_DIR = REPO_ROOT / "context"
APPS_DIR = REPO_ROOT / "apps"
MONITORING_DIR = REPO_ROOT / "monitoring"


def _dir_from_env(variable: str, default: Path) -> Path:
    value = os.environ.get(variable)
    return Path(value).resolve() if value else default


CACHE_DIR = _dir_from_env("FLOWER_FACTORY_CACHE", REPO_ROOT / ".cache")
BUILD_DIR = _dir_from_env("FLOWER_FACTORY_BUILD", REPO_ROOT / "build")
RESULTS_DIR = _dir_from_env("FLOWER_FACTORY_RESULTS", REPO_ROOT / "results")
CLOUD_DIR = _dir_from_env("FLOWER_FACTORY_CLOUD_DIR", REPO_ROOT / ".cloud" / "default")


# Upstream files (hostkit/upstream.py): $ONE_UPSTREAM_DIR, else ../shared/upstream where it exists, else the
# folder scripts/setup.sh fetches the pinned commits into.
FETCHED_UPSTREAM_DIR = REPO_ROOT / ".cache" / "upstream"
_SHARED_UPSTREAM_DIR = REPO_ROOT.parent / "shared" / "upstream"
UPSTREAM_DIR = _dir_from_env(
    "ONE_UPSTREAM_DIR", _SHARED_UPSTREAM_DIR if _SHARED_UPSTREAM_DIR.is_dir() else FETCHED_UPSTREAM_DIR
)
