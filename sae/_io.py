"""Small file-system helpers shared by the stages that write to disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk, so that a rename after it never exposes a
    short file after a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write JSON under a temporary name, flush it, then rename it over `path`."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1))
    fsync_path(tmp)
    os.replace(tmp, path)
