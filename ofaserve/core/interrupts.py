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


def forget_unhandled_interrupt() -> None:
    """Keep a handled interrupt's exit code.

    CPython sets a private flag when a KeyboardInterrupt passes through a C-level
    ``PyRun_*`` call (libraries run code that way while they import), and under
    ``python -m`` it then exits by SIGINT whatever code ``main`` returns. The stage has
    handled the interrupt, so the flag is cleared (where this CPython has it)."""
    import ctypes

    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (ValueError, AttributeError):  # another interpreter, or a CPython without the flag
        pass


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT/SIGTERM that arrive inside the block take effect when it ends; main thread only.

    Not a signal mask: a process-directed signal (Ctrl-C, ``kill``) goes to any thread that
    does not block it, and native threads (BLAS pools) block nothing, so Python would still run
    its handler in the main thread mid-block. A recording handler catches it wherever it lands;
    on leaving, the handlers are restored and the first signal is raised again against them.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def record(signum, frame):
        pending.append(signum)

    previous = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])
