"""Known library noise, silenced at its source; anything else still shows.

A newcomer reads a warning as an error. The libraries the pipeline drives raise a few
that say nothing about this run (deprecations inside paddle, a compatibility note per
patched class in paddlenlp, build-tool hints). Each is listed here with the category, the
module that raises it and the start of its message, and why it is harmless, so a filter
matches only that warning from that module: the same message from our code, or any other
warning from those libraries, still shows. ``known_noise_silenced`` applies them for the
duration of a block and restores the caller's filters afterwards.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Known:
    category: type[Warning]
    module: str  # regex matched against the whole name of the module the warning is attributed to
    message: str  # regex matched at the start of the message
    why: str


KNOWN_WARNINGS: tuple[Known, ...] = (
    Known(UserWarning, r"paddle\.utils\.cpp_extension\.extension_utils", r"No ccache found",
          "raised by `import paddle` for its C++ extension builder; ofaserve builds no extension"),
    Known(UserWarning, r"_distutils_hack", r"Setuptools is replacing distutils",
          "setuptools' notice when paddle imports distutils after setuptools"),
    Known(UserWarning, r"jieba\._compat", r"pkg_resources is deprecated",
          "jieba (a paddlenlp dependency for Chinese text, unused here) imports pkg_resources"),
    Known(UserWarning, r"paddlenlp\.transformers\.utils", r"The `forward` method of .* is patched",
          "compress/paddleslim_compat.py patches BertModel.forward on purpose (PaddleSlim on paddle 3); "
          "paddlenlp notes every patched class, once per width"),
    # paddle's VisibleDeprecationWarning subclasses UserWarning; naming the class would import paddle here
    Known(UserWarning, r"paddle\.base\.framework", r"(?s).*paddle\.base\.dygraph\.tensor_patch_methods\.gradient",
          "paddlenlp's head/neuron importance calls Tensor.gradient(), deprecated in paddle but working"),
    Known(UserWarning, r"paddle\.pir\.math_op_patch", r"Tensor do not have 'place' interface for pir graph mode",
          "paddle.jit.save traces the model; the traced tensors have no device, as expected"),
)

# Lines `import paddle` prints to stderr without the warnings module: with OMP_NUM_THREADS
# above 1 (set on purpose: the pipeline runs paddle on every core it may use) it warns
# about data-parallel training, which ofaserve does not use on CPU.
KNOWN_IMPORT_PRINTS: tuple[str, ...] = (
    r"WARNING: OMP_NUM_THREADS set to \d+, not 1\. ",
    r"PLEASE USE OMP_NUM_THREADS WISELY\.",
)


# Lines C++ libraries write straight to file descriptor 2 (glog), past Python's warnings
# and sys.stderr: (pattern matched at the start of a line, why it is harmless).
KNOWN_NATIVE_LINES: tuple[tuple[str, str], ...] = (
    (r"W\d{4} [\d:.]+ +\d+ eager_utils\.cc:\d+\] Paddle static graph\(PIR\) not support input out tensor",
     "paddle.jit.save, once per model it writes (the scorer's and the export's static models): the traced "
     "inputs are never written to"),
)
# ... and to file descriptor 1: paddle2onnx narrates every conversion from C++.
KNOWN_NATIVE_STDOUT_LINES: tuple[tuple[str, str], ...] = (
    (r"\[Paddle2ONNX\] (Start parsing the Paddle model file|Use opset_version = \d+ for ONNX export|"
     r"PaddlePaddle model is exported as ONNX format now)",
     "paddle2onnx's progress notes for each export; its warnings and errors still show"),
)
# A partial line held until its newline: a glog header (or the start of one). Anything else,
# e.g. a progress bar redrawn with carriage returns, is passed on at once.
_GLOG_START = re.compile(rb"[IWEF](\d{0,4}$|\d{4} )")


# Loggers whose INFO lines narrate library internals, quieted to WARNING (their warnings
# and errors still show).
KNOWN_CHATTY_LOGGERS: dict[str, str] = {
    "paddleslim.nas.ofa.ofa": "'Start to get pruned params/model, please wait...' at every sub-model export",
}


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def _install() -> None:
    for k in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=k.message, category=k.category, module=k.module + r"\Z")


@contextlib.contextmanager
def known_noise_silenced() -> Iterator[None]:
    """The known warnings are ignored and the chatty loggers quieted inside the block; the
    warning filters and logger levels are restored after."""
    loggers = [logging.getLogger(name) for name in KNOWN_CHATTY_LOGGERS]
    with warnings.catch_warnings():
        _install()
        for lg in loggers:  # a filter, not a level: the library sets its level when it is imported
            lg.addFilter(_below_warning)
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeFilter(_below_warning)


@contextlib.contextmanager
def known_prints_dropped(patterns: tuple[str, ...] = KNOWN_IMPORT_PRINTS) -> Iterator[None]:
    """Hold what the block prints to ``sys.stderr``; pass on every line except those that
    match ``patterns`` (for a library that prints its notices instead of warning)."""
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:  # an error inside the block still shows what was printed before it
        _repoint_log_handlers(held, sys.stderr)
        keep = [line for line in held.getvalue().splitlines(keepends=True)
                if not any(re.match(p, line) for p in patterns)]
        sys.stderr.write("".join(keep))


def _repoint_log_handlers(old, new) -> None:
    """A library that adds a logging handler at import binds it to the stderr of that
    moment, the holding buffer here; its records must reach the real stderr afterwards."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


@contextlib.contextmanager
def known_native_lines_dropped() -> Iterator[None]:
    """Known native lines on stderr and stdout dropped for the block (``_fd_filtered``)."""
    with _fd_filtered(2, sys.stderr, KNOWN_NATIVE_LINES), _fd_filtered(1, sys.stdout, KNOWN_NATIVE_STDOUT_LINES):
        yield


@contextlib.contextmanager
def _fd_filtered(fd: int, stream, lines: tuple[tuple[str, str], ...]) -> Iterator[None]:
    """File descriptor ``fd`` runs through a pipe for the block: known lines are dropped,
    everything else is passed on as it arrives (a progress bar's partial line too)."""
    try:
        stream.flush()
        target = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no usable descriptor: nothing native reaches a screen
        yield
        return
    known = [re.compile(p.encode()) for p, _ in lines]
    # a terminal stays a terminal (progress bars draw only on one): a pseudo-terminal then
    read_end, write_end = _terminal_like(fd) if os.isatty(fd) else os.pipe()
    os.dup2(write_end, fd)
    os.close(write_end)
    thread = threading.Thread(target=_forward, args=(read_end, target, known), daemon=True,
                              name=f"ofaserve-native-fd{fd}")
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
        os.dup2(target, fd)  # the pipe's last writer here closes: the thread reads to its end
        thread.join(timeout=5)
        if not thread.is_alive():  # else a child process still holds the pipe; the thread keeps forwarding
            os.close(target)


def _terminal_like(fd: int) -> tuple[int, int]:
    """A pseudo-terminal with ``fd``'s window size, passing bytes through unchanged."""
    import fcntl
    import termios
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)  # no newline translation: what is written is what arrives
    with contextlib.suppress(OSError):
        fcntl.ioctl(slave, termios.TIOCSWINSZ, fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    return master, slave


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # a pseudo-terminal whose last writer closed reads as EIO: its end
        return b""


def _forward(read_end: int, target: int, known: list[re.Pattern]) -> None:
    pending = b""
    while chunk := _read(read_end):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in complete if not any(k.match(line) for k in known))
        if pending and not _GLOG_START.match(pending):
            out, pending = out + pending, b""
        _write_all(target, out)
    if pending and not any(k.match(pending) for k in known):
        _write_all(target, pending)
    os.close(read_end)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
