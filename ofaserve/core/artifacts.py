"""Shared artifact types for every stage: errors, manifests and atomic output folders.

Each stage (compress -> export -> serve -> benchmarks) writes a folder holding its
artifacts plus a ``manifest.json`` that says what was made, from what, with which
settings. The next stage reads the manifest and never guesses paths.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
VERSION = "0.1.0"


class OfaserveError(Exception):
    """An error the user can fix; CLIs print it as one line and exit non-zero."""


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# The flags that decide how fast (and in which precisions) inference runs; the model name
# alone does not: one name covers CPUs with and without AVX-512.
SPEED_FLAGS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8"}


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(set(line.split(":", 1)[1].split()) & SPEED_FLAGS)
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_flags": cpu_flags(), "python": platform.python_version(),
            "platform": platform.platform()}


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are meant to be read
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


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
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


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
    return manifest


def write_manifest(folder: str | os.PathLike, stage: str, **fields: Any) -> dict[str, Any]:
    manifest = {"stage": stage, "ofaserve_version": VERSION, "created": now_iso(), **fields}
    write_json(Path(folder) / MANIFEST, manifest)
    return manifest


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


_INTERRUPTED: list[int] = []


def interrupted() -> bool:
    """True once SIGINT/SIGTERM arrived (even if the exception was swallowed somewhere)."""
    return bool(_INTERRUPTED)


def terminate_like_interrupt() -> None:
    """SIGINT and SIGTERM unwind like Ctrl-C, and leave a flag behind.

    The flag matters: a KeyboardInterrupt raised while Python runs a weakref or
    ``__del__`` callback (paddle and paddle2onnx have some) is printed and dropped.
    ``atomic_output_dir`` checks the flag before it swaps anything into place.
    """
    import signal

    def handler(signum, frame):
        _INTERRUPTED.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait (pending, not lost) until the block ends; main thread only."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
