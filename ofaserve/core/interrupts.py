"""Ctrl-C and SIGTERM unwind every stage the same way and leave a flag behind.

``atomic_output_dir`` (core.outputs) checks the flag before it swaps an output into place,
and ``stage_cli.run_stage`` uses it to tell an interrupt surfacing inside a library from a
failure.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

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
