"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.aoe_lab import Lab


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """An AoE Lab (tests/aoe_lab.py), its namespaces and processes removed afterwards."""
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()
