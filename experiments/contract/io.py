"""Files that readers never see half-written: atomic text and JSON writes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def removed_on_error(*paths: Path) -> Iterator[None]:
    """Remove `paths` (temporary files or folders) when the block raises: a write that fails
    half-way (a full disk, an interrupt) leaves no partial copy behind."""
    try:
        yield
    except BaseException:
        for path in paths:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to a temp file in the same folder, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; records are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(data, indent=2, default=jsonable))


def jsonable(obj: Any) -> Any:
    """What json.dumps writes for a value it does not know: a scalar tensor's item, else str."""
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)
