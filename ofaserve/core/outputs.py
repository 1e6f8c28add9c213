"""Stage outputs on disk: written whole or not at all.

Every stage writes into a temp folder next to its output and swaps it into place when the
work is done (``atomic_output_dir``); ``check_output_dir`` refuses to clobber a folder that is not a previous
output of the same stage.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ofaserve.core.errors import OfaserveError
from ofaserve.core.interrupts import _signals_held, interrupted
from ofaserve.core.manifests import MANIFEST


def check_output_dir(path: str | os.PathLike, *, stage: str, overwrite: bool = False) -> Path:
    """Refuse to clobber a folder that is not a previous output of the same stage."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise OfaserveError(f"output {path} exists and is not a folder")
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if entries and not (path / MANIFEST).is_file() and not overwrite:
            raise OfaserveError(
                f"output dir {path} exists and holds other content ({len(entries)} entries) that is "
                f"not an ofaserve {stage} output; choose an empty or new folder")
        if (path / MANIFEST).is_file():
            try:
                prev = json.loads((path / MANIFEST).read_text()).get("stage")
            except ValueError:
                prev = None
            if prev != stage and not overwrite:
                raise OfaserveError(f"output dir {path} holds the output of stage {prev!r}, not {stage!r}")
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise OfaserveError(f"cannot write to {parent}: permission denied")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(final: Path) -> None:
    """Remove temp/old siblings left by a process that was killed (SIGKILL, power loss)."""
    for pattern in (f".{final.name}.tmp-*", f".{final.name}.old-*"):
        for p in final.parent.glob(pattern):
            try:
                pid = int(p.name.rsplit("-", 2)[-2] if ".tmp-" in p.name else p.name.rsplit("-", 1)[-1])
            except ValueError:
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder next to ``final``; on success swap it into place.

    On any error (or Ctrl-C/SIGTERM, see ``terminate_like_interrupt``) the temp folder
    is removed and a previous ``final`` is left exactly as it was: nothing is ever
    half-written at the final path. Temp folders of killed processes are cleaned up
    by the next run.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        if interrupted():
            raise KeyboardInterrupt("interrupted earlier (signal caught in a callback)")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old, swapped = None, False
    try:
        with _signals_held():  # a Ctrl-C between the two renames would leave no ``final`` at all
            try:
                if final.exists():
                    old = final.with_name(f".{final.name}.old-{os.getpid()}")
                    os.replace(final, old)
                os.replace(tmp, final)
                swapped = True
                _REPLACED.add(final.resolve())
            except BaseException:
                if old is not None and not final.exists():
                    os.replace(old, final)  # put the previous output back
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    finally:  # also when a signal held during the swap is delivered on leaving it
        if swapped and old is not None:
            shutil.rmtree(old, ignore_errors=True)


_REPLACED: set[Path] = set()


def output_replaced(path: str | os.PathLike) -> bool:
    """True once ``atomic_output_dir`` swapped a complete new output into ``path`` in this
    process: an interrupt after that point leaves the new output, not the old one."""
    return Path(path).resolve() in _REPLACED


def interrupted_message(path: str | os.PathLike, hint_if_unchanged: str = "") -> str:
    """What an interrupted stage left at ``path``, for its CLI."""
    if output_replaced(path):
        return f"interrupted after the last step: {path} holds the complete new output"
    return f"interrupted: {path} is unchanged{hint_if_unchanged}"
