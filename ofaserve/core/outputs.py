"""Stage outputs on disk: checked before any work, written by one run at a time, swapped
in whole or not at all, durable once swapped.

``check_output_dir`` refuses, before a stage does any work, an output it may not
replace: a file, a folder inside (or holding) one of its inputs, a folder that is not
writable, or a folder that holds anything but a previous output of the same stage
(its manifest says which stage made it) unless the user passed ``--overwrite``.
``output_lock`` holds a lock file next to the output for the whole run, so a second
run on the same output stops at once, naming the first, instead of deleting its temp
or work folders. ``atomic_output_dir`` builds the output in a temp folder next to it,
syncs every file, and swaps it into place; ``work_dir`` is a stage's resumable work
folder (``<output>.partial``), removed only when the stage's own marker is in it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import fsync_path, write_json
from ofaserve.core.interrupts import interrupted, signals_deferred
from ofaserve.core.manifests import MANIFEST

log = logging.getLogger("ofaserve.outputs")

WORK_MARKER = ".ofaserve-work.json"  # in a work folder: which stage made it (and may remove it)


# ---------------------------------------------------------------------------- checks
def check_output_dir(path: str | os.PathLike, *, stage: str, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike | None] = (), keep: Iterable[str] = ()) -> Path:
    """``path`` if this stage may write its output there; else one clear ``OfaserveError``.

    Creates nothing. ``inputs``: folders and files the stage reads (the output may be
    neither inside one nor hold one). ``keep``: names the swap carries over into the new
    output (a tracked README), which therefore do not make a folder foreign."""
    path = _folder_or_new(path, "output dir")
    _refuse_overlap(path, inputs)
    if path.is_dir() and not overwrite:
        _refuse_foreign(path, stage, set(keep))
    _check_writable(path)
    return path


def _folder_or_new(path: str | os.PathLike, label: str) -> Path:
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OfaserveError(f"{label} {path} exists and is not a folder")
    return path


def _listing(names: list[str]) -> str:
    """How many entries a folder holds, and the first three, for an error message."""
    return f"{len(names)} entries: " + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def previous_stage(path: Path) -> str | None:
    """The stage whose manifest is in ``path`` (None: no readable manifest)."""
    try:
        stage = json.loads((path / MANIFEST).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return stage if isinstance(stage, str) else None


def _refuse_foreign(path: Path, stage: str, keep: set[str]) -> None:
    entries = sorted(p.name for p in path.iterdir() if p.name not in keep)
    if not entries:
        return
    prev = previous_stage(path)
    if prev == stage:
        return
    if prev is None:
        raise OfaserveError(
            f"output dir {path} exists and holds other content ({_listing(entries)}) that is not an "
            f"ofaserve {stage} output (no manifest.json of that stage): choose an empty or new folder, or pass --overwrite to replace it")
    raise OfaserveError(f"output dir {path} holds the output of stage {prev!r}, not {stage!r}: choose another folder, "
                        "or pass --overwrite to replace it")


def _refuse_overlap(path: Path, inputs: Iterable[str | os.PathLike | None]) -> None:
    out = path.resolve()
    for given in inputs:
        if given is None or not Path(given).exists():
            continue  # e.g. a model name rather than a path: nothing on disk to protect
        src = Path(given).resolve()
        if out == src:
            raise OfaserveError(f"output dir {path} is the input {given}: write the output to another folder")
        if out.is_relative_to(src):
            raise OfaserveError(f"output dir {path} is inside the input {given}: write the output outside it")
        if src.is_relative_to(out):
            raise OfaserveError(f"the input {given} is inside the output dir {path}, which the new output replaces: "
                                "write the output to another folder")


def _check_writable(path: Path) -> None:
    """A probe folder made and removed where the output (or its first missing parent) goes:
    ``os.access`` says yes to root on a read-only mount; making something is the test."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OfaserveError(f"cannot create the output dir {path}: {parent} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=parent))
    except OSError as e:
        raise OfaserveError(f"cannot write the output dir {path}: {parent} is not writable ({e.strerror or e})") from e


def check_report_dir(path: str | os.PathLike, writes: Iterable[str], *, overwrite: bool = False) -> Path:
    """``path`` if a report (the files named ``writes``, no manifest) may be written there:
    a new or empty folder, or one that holds only such files (the same command's earlier
    report, which the new one replaces); else one clear ``OfaserveError``. Creates nothing."""
    path = _folder_or_new(path, "--output_dir")
    if path.is_dir() and not overwrite:
        foreign = sorted(p.name for p in path.iterdir() if p.name not in set(writes))
        if foreign:
            raise OfaserveError(f"--output_dir {path} holds other content ({_listing(foreign)}) "
                                f"besides a report ({', '.join(writes)}): choose an empty or new folder, or pass "
                                "--overwrite to write the report among them")
    _check_writable(path)
    return path


def check_output_files(paths: Iterable[Path], *, overwrite: bool = False) -> None:
    """Loose output files (a path prefix's ``.json`` / ``.pdiparams``) carry no manifest,
    so an existing one is replaced only with ``--overwrite``."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise OfaserveError(f"{', '.join(existing)} exist(s): choose another prefix, or pass --overwrite to "
                            "replace them")
    for p in paths:
        if p.is_dir():
            raise OfaserveError(f"output file {p} is a folder")
        _check_writable(p)


# ---------------------------------------------------------------------------- lock
_HELD: dict[Path, object] = {}


def lock_path(final: str | os.PathLike) -> Path:
    final = Path(final).absolute()
    return final.parent.resolve() / f".{final.name}.lock"


@contextlib.contextmanager
def output_lock(final: str | os.PathLike) -> Iterator[None]:
    """One run at a time on ``final``: an OS lock (``filelock``) on ``.<name>.lock`` next to
    it, held until the block ends (the kernel drops it if the process dies). The holder
    writes its pid and command into the file so a second run can say who holds it.
    Re-entrant within a process (a stage's lock covers the swap inside it)."""
    from filelock import FileLock, Timeout

    path = key = lock_path(final)
    if key in _HELD:
        yield
        return
    owner = f"pid {os.getpid()}: {' '.join(sys.argv) or sys.executable}\n"

    def record_owner(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=0, on_acquired=record_owner)
        lock.acquire()
    except Timeout:
        try:
            holder = path.read_text().strip() or "pid unknown"
        except OSError:
            holder = "pid unknown"
        raise OfaserveError(f"{final} is being written by another run ({holder}); wait for it to finish, or "
                            "stop it, then run again") from None
    except OSError as e:
        raise OfaserveError(f"cannot lock output {final}: {e.strerror or e} ({path})") from e
    _HELD[key] = lock
    try:
        yield
    finally:
        del _HELD[key]
        # unlinked while held: a run that opened the old file sees it gone and tries again
        with contextlib.suppress(OSError):
            path.unlink()
        lock.release()


# ---------------------------------------------------------------------------- work folder
def work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def check_work_dir(out: Path, *, stage: str, keep_it: bool) -> Path:
    """Refuse, before any work, a ``<out>.partial`` this stage would remove but did not make
    (no marker of ``stage`` in it); ``keep_it``: the run continues or replaces it on the
    user's word (``--resume``, ``--overwrite``)."""
    partial = work_dir(out)
    if partial.exists() and not partial.is_dir():
        raise OfaserveError(f"{partial} (the work folder of {out}) exists and is not a folder: move it away")
    if partial.is_dir() and not keep_it and any(partial.iterdir()) and _work_stage(partial) != stage:
        raise OfaserveError(f"{partial} (the work folder of {out}) exists and was not made by ofaserve {stage} "
                            "(no marker in it): move it away, or pass --overwrite to replace it")
    return partial


def fresh_work_dir(out: Path, *, stage: str, resume: bool) -> Path:
    """``<out>.partial`` with this stage's marker; a previous one is removed unless ``resume``
    (``check_work_dir`` ran first and said it may be)."""
    partial = work_dir(out)
    if partial.exists() and not resume:
        log.info("removing stale work folder %s (pass --resume to continue it)", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / WORK_MARKER, {"stage": stage, "output": str(out)})
    return partial


def _work_stage(partial: Path) -> str | None:
    try:
        return json.loads((partial / WORK_MARKER).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------- swap
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


def _carry_over(final: Path, tmp: Path, keep: Iterable[str]) -> None:
    """Files the user keeps in the output folder (``keep``) into the new output."""
    for name in keep:
        src = final / name
        if src.is_file() and not (tmp / name).exists():
            shutil.copy2(src, tmp / name)


def _fsync_tree(root: Path) -> None:
    """Every file and folder under ``root`` (and ``root``) on disk before the rename that
    publishes it: otherwise a power cut after the rename can leave empty files in place."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


@contextlib.contextmanager
def atomic_output_dir(final: str | os.PathLike, keep: Iterable[str] = ()) -> Iterator[Path]:
    """Yield a temp folder next to ``final``; on success swap it into place.

    On any error (or Ctrl-C/SIGTERM, see ``terminate_like_interrupt``) the temp folder
    is removed and a previous ``final`` is left exactly as it was: nothing is ever
    half-written at the final path. ``keep``: names in ``final`` carried into the new
    output. The new output is synced before the swap and its parent folder after it.
    Holds ``output_lock(final)``. Temp folders of killed processes are cleaned up by the
    next run.
    """
    final = Path(final)
    with output_lock(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
        try:
            yield tmp
            if interrupted():
                raise KeyboardInterrupt("interrupted earlier (signal caught in a callback)")
            _carry_over(final, tmp, keep)
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Signals are deferred from hiding the old output until it is removed: a Ctrl-C between
        # the two renames would leave no ``final`` at all, and one delivered during the
        # clean-up (Python runs its handler at the next bytecode) would leave the old copy.
        with signals_deferred():
            old = None
            try:
                if final.exists():
                    old = final.with_name(f".{final.name}.old-{os.getpid()}")
                    os.replace(final, old)
                os.replace(tmp, final)
            except BaseException:
                if old is not None and not final.exists():
                    os.replace(old, final)  # put the previous output back
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            _REPLACED.add(final.resolve())
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            fsync_path(final.parent)


_REPLACED: set[Path] = set()


def forget_replaced(path: str | os.PathLike) -> None:
    """A new run on ``path`` in this process (the demo runs stages in-process): nothing of
    it is swapped in yet."""
    _REPLACED.discard(Path(path).resolve())


def output_replaced(path: str | os.PathLike) -> bool:
    """True once ``atomic_output_dir`` swapped a complete new output into ``path`` in this
    process: an interrupt after that point leaves the new output, not the old one."""
    return Path(path).resolve() in _REPLACED


def output_state(path: str | os.PathLike) -> str:
    """What a stage that stopped early left at ``path``, for its CLI."""
    if output_replaced(path):
        return f"{path} holds the complete new output"
    return f"{path} is unchanged"


def interrupted_message(path: str | os.PathLike, hint_if_unchanged: str = "") -> str:
    """What an interrupted stage left at ``path``, for its CLI."""
    if output_replaced(path):
        return f"interrupted after the last step: {output_state(path)}"
    return f"interrupted: {output_state(path)}{hint_if_unchanged}"
