"""The one way a stage's CLI turns its outcome into output and an exit code.

0: done. 2: an error the user can fix (``OfaserveError``), printed as one line (with its
``table`` first when it carries one, e.g. a parity report). 130: interrupted (Ctrl-C or
SIGTERM), saying what is at the output path. A signal can also surface as another error
raised inside a library (paddle wraps it in its own RuntimeError): the flag that
``terminate_like_interrupt`` leaves tells the two apart. Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from ofaserve.core import artifacts
from ofaserve.core.artifacts import OfaserveError
from ofaserve.core.quiet import known_noise_silenced


def run_stage(work: Callable[[], Any], output_dir: str, resume_hint: str = "") -> tuple[int, Any]:
    """(exit code, what ``work`` returned or None)."""
    artifacts.terminate_like_interrupt()
    try:
        with known_noise_silenced():  # library warnings known to be harmless; others still show
            return 0, work()
    except (KeyboardInterrupt, Exception) as e:
        if isinstance(e, KeyboardInterrupt) or artifacts.interrupted():
            print(artifacts.interrupted_message(output_dir, resume_hint), file=sys.stderr)
            return 130, None
        if isinstance(e, OfaserveError):
            if getattr(e, "table", None):
                print(e.table, file=sys.stderr)
            print(f"error: {e}", file=sys.stderr)
            return 2, None
        raise
