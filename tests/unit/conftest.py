"""Unit tests never reach the network: the PyPI check of Flower versions is off in every command they run
(subprocesses inherit the setting). Tests of that check inject the release list, or opt in with
``-m network``."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWER_FACTORY_OFFLINE", "1")
