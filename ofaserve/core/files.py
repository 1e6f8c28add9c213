"""Files written whole and durable: JSON by temp file + fsync + rename (a reader never sees
half a file, a power cut never leaves an empty one), the checksums stages record for the
files they hand on, and the rule that a path a manifest names stays inside its folder."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from ofaserve.core.errors import OfaserveError
from ofaserve.core.width import Width


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a folder's contents (a folder: its entries) to the disk. A rename
    is durable only once the folder holding it is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def files_sha256(folder: str | os.PathLike, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """{path relative to ``folder``: sha256} of every file under it but ``skip`` (top level)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() not in skip}


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically and durably (``write_text``)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write text atomically and durably: temp file, fsync, rename, fsync of the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be read
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_path(path.parent)


def confined_path(folder: str | os.PathLike, rel: str, what: str) -> Path:
    """``folder / rel`` for a path read from ``folder``'s manifest, refused unless it stays
    inside ``folder``: no absolute path, no ``..``, no symlink that leads out. A manifest
    is data; without this, one that names ``/etc/...`` or ``../..`` would make the next
    stage read (and a repository copy) files from anywhere."""
    folder = Path(folder)
    if not isinstance(rel, str) or not rel:
        raise OfaserveError(f"{folder}/manifest.json: {what} is {rel!r}, not a relative path")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise OfaserveError(f"{folder}/manifest.json: {what} {rel!r} leaves its folder (absolute or '..' path); "
                            "a stage's manifest names only files inside the stage's folder")
    path = folder / rel
    base = folder.resolve()
    if not path.resolve().is_relative_to(base):
        raise OfaserveError(f"{folder}/manifest.json: {what} {rel!r} is a symlink to {path.resolve()}, outside "
                            f"{folder}; a stage's manifest names only files inside the stage's folder")
    return path


def _json_default(o: Any) -> Any:
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, Width):
        return o.value
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
