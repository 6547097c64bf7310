"""Output storage: where job outputs live and how they are written and found.

Local directories only for now (``SG_OUTPUT_URL=file:///...``); another backend (e.g. S3) would
sit beside :class:`LocalStorage` with the same three methods.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

#: Output names a worker may write and the gateway may serve: no separators, no leading dot or dash.
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid output name, else raise ValueError."""
    if not OUTPUT_NAME.match(name or ""):
        raise ValueError(f"output name {name!r}: use 1-128 of [A-Za-z0-9._-], not starting with . or -")
    return name


class LocalStorage:
    """Outputs as files under ``root/<job uuid>/<name>``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, job_id: str, name: str, source: Path) -> int:
        """Copy ``source`` in atomically (temp name, then rename); return its size in bytes."""
        check_name(name)
        dest_dir = self.root / job_id
        dest_dir.mkdir(parents=True, exist_ok=True)
        partial = dest_dir / f".{name}.part"
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, dest_dir / name)
        finally:
            partial.unlink(missing_ok=True)
        return (dest_dir / name).stat().st_size

    def path(self, job_id: str, name: str) -> Path | None:
        """The file of an output, or None when there is no such output."""
        if not OUTPUT_NAME.match(name):
            return None
        path = self.root / job_id / name
        return path if path.is_file() else None
