"""Shared test setup: a private gradient-graph cache per test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Built gradient graphs go to a temporary cache, never the user's (subprocesses too)."""
    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("BLACKBOX_SAL_CACHE", str(path))
    yield path
    mp.undo()
