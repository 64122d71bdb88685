"""Paths of the bundled test data (importable as tests._data; conftest modules are not)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "sae" / "_bundled" / "wikitext-2-valid.txt"
