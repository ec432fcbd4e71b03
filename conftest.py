"""Root conftest: doctests in autopar/ plan against a throwaway cache, never ~/.cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _doctest_cache_dir(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.setenv("AUTOPAR_CACHE_DIR", str(tmp_path / "autopar-cache"))
