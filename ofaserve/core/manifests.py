"""The stage boundary: each stage's folder holds a ``manifest.json`` that says what was made,
from what, with which settings; the next stage reads it and never guesses paths."""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import confined_path, write_json

MANIFEST = "manifest.json"
VERSION = "0.1.0"
# Fields whose values name files of the stage's own folder; every read checks they stay in it.
PATH_FIELDS = ("artifacts", "checkpoints", "tokenizer", "paddle_static_files")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def read_manifest(folder: str | os.PathLike, stage: str | None = None) -> dict[str, Any]:
    """Read ``folder/manifest.json``; check it was written by ``stage`` when given."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise OfaserveError(f"{folder} does not exist or is not a folder")
    if not path.is_file():
        raise OfaserveError(
            f"{path} is missing: {folder} is not the output of an ofaserve stage"
            + (f" (expected the output of `ofaserve {stage}`)" if stage else ""))
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise OfaserveError(f"{path} is unreadable or corrupted ({e}); re-run the stage that made it") from e
    if stage is not None and manifest.get("stage") != stage:
        raise OfaserveError(
            f"{folder} was written by stage {manifest.get('stage')!r}, expected {stage!r}: "
            f"pass the output folder of `ofaserve {stage}`")
    for field in PATH_FIELDS:
        value = manifest.get(field)
        named = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, rel in named:
            confined_path(folder, rel, f"{field}[{key!r}]")
    return manifest


def write_manifest(folder: str | os.PathLike, stage: str, **fields: Any) -> dict[str, Any]:
    manifest = {"stage": stage, "ofaserve_version": VERSION, "created": now_iso(), **fields}
    write_json(Path(folder) / MANIFEST, manifest)
    return manifest
