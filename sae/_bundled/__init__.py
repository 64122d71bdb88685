"""Data files the code reads by default, shipped inside the package so that a wheel install (not
only a repository checkout) has them. Sources and licences: README.md in this folder.

    tasks/capitals.jsonl, tasks/agreement.jsonl   the built-in circuit tasks (sae.analysis.circuits)
    wikitext-2-valid.txt                          the default ordinary-text corpus (sae behaviour)
"""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent


def bundled_path(name: str) -> Path:
    """The path of bundled file `name` (relative to this folder, `/`-separated)."""
    return BUNDLED_DIR.joinpath(*name.split("/"))
