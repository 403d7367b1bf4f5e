"""Fixtures shared by the test files."""

from pathlib import Path

import pytest

from minildm import pretrained

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def repo_data(tmp_path, monkeypatch):
    """Read the repository's data/ folder; never fall back to a cached or freshly trained model."""
    monkeypatch.setenv(pretrained.DATA_ENV, str(REPO_DATA))
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
