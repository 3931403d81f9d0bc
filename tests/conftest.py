"""Shared test fixtures: repository root on sys.path, the optional ../shared folder."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def shared_path() -> Path | None:
    """The reference folder (``$MOY_SHARED`` or ``../shared``), or None when absent."""
    env = os.environ.get("MOY_SHARED")
    p = Path(env).resolve() if env else ROOT.parent / "shared"  # absolute: tests may chdir
    return p if p.is_dir() else None


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    """Per-test user cache dir so no test writes to ~/.cache."""
    d = tmp_path / "_usercache"
    monkeypatch.setenv("MOYOLO_CACHE_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    p = shared_path()
    if p is None:
        pytest.skip("../shared is absent (fresh clone): reference fixtures unavailable")
    return p


@pytest.fixture(scope="session")
def coco128_dir(shared_dir: Path) -> Path:
    p = shared_dir / "datasets" / "coco128"
    if not (p / "images").is_dir():
        pytest.skip("coco128 is absent under ../shared/datasets")
    return p
