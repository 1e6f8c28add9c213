"""The one way a stage's CLI turns its outcome into output and an exit code.

0: done. 2: an error the user can fix (``OfaserveError``), printed as one line (with its
``table`` first when it carries one, e.g. a parity report), or the machine refusing a
write or a read (disk full, permission denied, read-only file system: ``environment_error``),
printed as one line that says what is at the output path. 130: interrupted (Ctrl-C or
SIGTERM), saying what is at the output path. A signal can also surface as another error
raised inside a library (paddle wraps it in its own RuntimeError): the flag that
``terminate_like_interrupt`` leaves tells the two apart. Anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

from ofaserve.core import interrupts
from ofaserve.core.errors import OfaserveError
from ofaserve.core.outputs import forget_replaced, interrupted_message, output_state
from ofaserve.core.quiet import known_native_lines_dropped, known_noise_silenced


T = TypeVar("T")


def argument_type(parse: Callable[[str], T], name: str, or_else: str = "") -> Callable[[str], T]:
    """``parse`` (raising ``OfaserveError`` on bad text) as an argparse ``type=``: argparse
    then prints the error's own words as a usage error. ``or_else``: what else the flag
    accepts, added to the message (", or 'auto'"). ``name`` is what argparse calls the type."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except OfaserveError as e:
            raise argparse.ArgumentTypeError(f"{e}{or_else}") from None
    convert.__name__ = name
    return convert


_STATES_DEFAULT = re.compile(r"[\[(]default\b")  # a help that states its own default


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help only where it tells something: not for a switch
    that takes no value (``--no_x``'s stored True says nothing a user types), nor for an unset
    default (None, False) that the help explains, nor when the help already states its default
    ("[default: ...]" or "(default ...)", as it does where a profile or another flag decides
    it). A help that only mentions defaults in passing ("by default only ...") still gets it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.nargs == 0 or action.default in (None, False, argparse.SUPPRESS) or _STATES_DEFAULT.search(text):
            return text
        return super()._get_help_string(action)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_log_file: Path | None = None  # set when a caller (the demo) keeps the stages' logs in a file


def setup_logging() -> None:
    """A stage CLI's logging: INFO lines on stderr, unless its caller sends them to a file
    (``log_to_file``). Called before paddle is imported; ``force`` replaces a root handler
    a library may have added at import, which can hold a stream that is gone."""
    if _log_file is None:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True)


class _Latest(logging.Handler):
    """Keeps the newest INFO line of ofaserve's own loggers (what the stage is doing now)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("ofaserve"):
            self.message = record.getMessage()


_latest = _Latest()


def latest_log_line(forget: bool = False) -> str:
    """The newest ofaserve log line since ``log_to_file`` ("" before any); ``forget``:
    start over (a new stage begins)."""
    message = _latest.message
    if forget:
        _latest.message = ""
    return message


def log_to_file(path: Path) -> None:
    """INFO and up to ``path`` (appended), only WARNING and up on stderr: for a driver that
    prints its own progress lines (the demo) and keeps the stages' narration for later;
    ``latest_log_line`` tells it what the stage logged last."""
    global _log_file
    _log_file = Path(path)
    _log_file.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(_log_file)
    to_file.setLevel(logging.INFO)
    to_screen = logging.StreamHandler(sys.stderr)
    to_screen.setLevel(logging.WARNING)
    for handler in (to_file, to_screen):
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    _latest.message = ""
    logging.basicConfig(level=logging.INFO, handlers=[to_file, to_screen, _latest], force=True)


# What the machine may refuse a stage that is not a bug in it: the user frees space, fixes
# permissions or picks a writable folder, as for any other bad input.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})


def environment_error(e: BaseException) -> OSError | None:
    """The OSError of ``ENVIRONMENT_ERRNOS`` behind ``e`` (itself, or what a library wrapped),
    or None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def environment_message(e: OSError, output_dir: str | None) -> str:
    """One line: what was refused, on which file, and what is at the output now."""
    where = f": {e.filename}" if e.filename else ""
    state = f"; {output_state(output_dir)}" if output_dir else ""
    return f"{e.strerror or e}{where}{state}"


def run_stage(work: Callable[[], Any], output_dir: str | None, resume_hint: str = "") -> tuple[int, Any]:
    """(exit code, what ``work`` returned or None). ``output_dir``: what the stage writes, for
    the message after an interrupt or a refused write (None: it writes nothing)."""
    interrupts.terminate_like_interrupt()
    if output_dir:
        forget_replaced(output_dir)
    try:
        # library warnings and native log lines known to be harmless; others still show
        with known_noise_silenced(), known_native_lines_dropped():
            return 0, work()
    except (KeyboardInterrupt, Exception) as e:
        if isinstance(e, KeyboardInterrupt) or interrupts.interrupted():
            interrupts.forget_unhandled_interrupt()
            print(interrupted_message(output_dir, resume_hint) if output_dir else "interrupted", file=sys.stderr)
            return 130, None
        if isinstance(e, OfaserveError):
            if getattr(e, "table", None):
                print(e.table, file=sys.stderr)
            print(f"error: {e}", file=sys.stderr)
            return 2, None
        if (refused := environment_error(e)) is not None:
            print(f"error: {environment_message(refused, output_dir)}", file=sys.stderr)
            return 2, None
        raise
