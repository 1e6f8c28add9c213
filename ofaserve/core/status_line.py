"""Status lines on a screen that progress bars share: a line printed above the bars, and a
heartbeat that prints one every few seconds while a stage runs."""
from __future__ import annotations

import threading
from typing import Any, Callable, TextIO

from ofaserve.core.time_budget import Budget


def print_above_bars(line: str, screen: TextIO) -> None:
    """``line`` on ``screen``, above any progress bar drawn on the same terminal.

    A bar redraws its line in place; text written to that terminal by anyone else lands in
    the middle of it. ``tqdm.write`` clears the bars of the stream it writes to and draws
    them again after the line, but only in order when line and bar go through one stream:
    under a stage, stdout and stderr each pass through their own filter (core/quiet.py) and
    the demo's stdout may be its log. So when a bar is on a terminal and ``screen`` is a
    terminal too, the line goes through the bar's own stream."""
    from tqdm import tqdm

    with tqdm.get_lock():
        # every bar shown now (a disabled bar, e.g. one off a terminal, leaves this set)
        bars = [b for b in list(getattr(tqdm, "_instances", ())) if not getattr(b, "disable", True)]
        out = next((b.fp for b in bars if _is_terminal(b.fp)), None) if _is_terminal(screen) else None
        tqdm.write(line, file=out or screen, nolock=True)
        (out or screen).flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed, or no file behind it
        return False


class Heartbeat:
    """Prints ``budget.progress_line(stage)`` every ``every_s`` seconds while a stage runs
    (a background thread; ``write`` must be safe to call from it, e.g. ``print_above_bars``)."""

    def __init__(self, budget: Budget, stage: str, every_s: float, write: Callable[[str], None]):
        self.budget, self.stage, self.every_s, self.write = budget, stage, every_s, write
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{stage}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.write(self.budget.progress_line(self.stage))

    def __enter__(self) -> "Heartbeat":
        if self.every_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
