"""Fixtures of the robustness suite: a folder of good photos to which one hostile file is added."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import scene

GOOD_PHOTOS = 5


@pytest.fixture
def good_folder(tmp_path) -> Path:
    """Five ordinary JPEGs, the rest of every batch a hostile file joins."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(GOOD_PHOTOS):
        scene(100 + i).save(folder / f"good-{i}.jpg", quality=90)
    return folder
