"""Atomic file writes: write to a temporary file in the target folder, then rename over the target."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def default_file_mode() -> int:
    """0o666 minus the process umask: what ``open(path, 'w')`` would have given (mkstemp makes files 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)``, then rename it to ``path``; on any error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def temporary_files(folder: Path) -> list[Path]:
    """Temporary files that :func:`write_atomic` left in ``folder`` when its process was killed."""
    return sorted(Path(folder).glob(".*.tmp"))


def remove_stale(paths: Iterable[Path], min_age_hours: float, what: str) -> list[Path]:
    """Remove leftovers of killed runs (files or folders) older than ``min_age_hours`` and say so; report the
    younger ones, which a run that is still going may own. Returns what was removed."""
    removed = []
    for path in paths:
        age_hours = (time.time() - path.stat().st_mtime) / 3600
        if age_hours < min_age_hours:
            print(f"Note: {path} looks like {what} of another run that may still be going; left alone.")
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"Removed {path}: {what} of an interrupted run.")
        removed.append(path)
    return removed
