"""Shared fixtures of the end-to-end tests: host Flower venvs (built once, cached) and per-test work dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from factory.flwrenv import FlowerEnv, ensure_flower

CURRENT = "1.42.0"
PREVIOUS = "1.41.0"


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
