"""A wall-clock budget that stages share, and the arithmetic that sizes work to fit it.

The demo promises a time, but machines differ several-fold (a 2-core AVX2 CPU against an
AVX-512 one at the same work), so no fixed amount of work can keep the
promise. Instead each stage gets a share of the time still left when it starts, measures
its own speed in its first seconds, and picks how much to do from that. Everything it
cut, and why, is recorded (``Budget.record``), never silent.

Nothing here imports paddle or Triton: the arithmetic is plain functions with the
measured rates passed in, so it is tested with injected numbers.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, TextIO


def clock_text(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour); negative values keep their sign."""
    sign, s = ("-" if seconds < 0 else ""), int(round(abs(seconds)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{sign}{h}:{m:02d}:{s:02d}" if h else f"{sign}{m}:{s:02d}"


@dataclass
class Cut:
    """One thing a stage did less of than its unbudgeted default, and why."""
    stage: str
    what: str
    default: Any
    chosen: Any
    why: str
    at_floor: bool = False  # kept the stage's minimum although the time allowed less (it overran)

    def line(self) -> str:
        return f"{self.stage}: {self.what}: {self.default} -> {self.chosen} ({self.why})"


@dataclass
class StageRecord:
    share: float
    allotted_s: float | None = None
    started_s: float | None = None  # seconds after the budget started
    used_s: float | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    cuts: list[Cut] = field(default_factory=list)
    reused: bool = False
    reserve_s: float = 0.0  # the least the stage gets, whatever the stages before it used


class Budget:
    """``total_s`` seconds from construction, split between named stages by ``shares``.

    A stage's allotment is fixed when it starts: its reserve (``reserve``, 0 unless set)
    plus its share of the time left above the reserves of the stages not started yet. A
    stage that finishes early leaves its time to the later ones; one that overruns takes
    it from their shares but never from their reserves (a reserve is a floor: a stage
    below which the work means nothing gets it even past the budget, visibly). ``total_s``
    None: no budget (every allotment is None and nothing is cut).
    """

    def __init__(self, total_s: float | None, shares: dict[str, float], clock: Callable[[], float] = time.monotonic):
        if total_s is not None and total_s <= 0:
            raise ValueError("a budget must be positive (None for no budget)")
        if not shares or any(v <= 0 for v in shares.values()):
            raise ValueError("every stage needs a positive share")
        self.total_s, self.clock = total_s, clock
        self.t0 = clock()
        self.stages = {name: StageRecord(share) for name, share in shares.items()}

    def elapsed(self) -> float:
        return self.clock() - self.t0

    def left(self) -> float | None:
        return None if self.total_s is None else self.total_s - self.elapsed()

    def reserve(self, stage: str, seconds: float) -> None:
        """Set aside ``seconds`` for ``stage`` before the stages ahead of it size their work."""
        self.stages[stage].reserve_s = max(0.0, float(seconds))

    def allot(self, stage: str) -> float | None:
        """Seconds for ``stage`` if it started now (never below its reserve, never negative)."""
        if self.total_s is None:
            return None
        waiting = [n for n, r in self.stages.items() if r.started_s is None or n == stage]
        above = max(0.0, self.left() - sum(self.stages[n].reserve_s for n in waiting))
        share = self.stages[stage].share / sum(self.stages[n].share for n in waiting)
        return self.stages[stage].reserve_s + above * share

    def start(self, stage: str) -> float | None:
        rec = self.stages[stage]
        rec.allotted_s = self.allot(stage)
        rec.started_s = self.elapsed()
        return rec.allotted_s

    def finish(self, stage: str, reused: bool = False) -> float:
        rec = self.stages[stage]
        rec.used_s = self.elapsed() - rec.started_s
        rec.reused = reused
        return rec.used_s

    def stage_elapsed(self, stage: str) -> float:
        return self.elapsed() - self.stages[stage].started_s

    def measure(self, stage: str, **values: Any) -> None:
        self.stages[stage].measured.update(values)

    def cut(self, stage: str, what: str, default: Any, chosen: Any, why: str, at_floor: bool = False) -> Cut:
        c = Cut(stage, what, default, chosen, why, at_floor)
        self.stages[stage].cuts.append(c)
        return c

    def cuts(self) -> list[Cut]:
        return [c for r in self.stages.values() for c in r.cuts]

    def record(self) -> dict[str, Any]:
        r2 = lambda v: None if v is None else round(v, 1)  # noqa: E731
        return {"budget_s": self.total_s, "elapsed_s": r2(self.elapsed()),
                "within_budget": None if self.total_s is None else self.elapsed() <= self.total_s,
                "stages": {n: {"share": r.share, "reserve_s": r2(r.reserve_s), "allotted_s": r2(r.allotted_s),
                               "started_s": r2(r.started_s),
                               "used_s": r2(r.used_s), "reused": r.reused, "measured": r.measured,
                               "cuts": [asdict(c) for c in r.cuts]}
                           for n, r in self.stages.items()},
                "cuts": [asdict(c) for c in self.cuts()]}

    def progress_line(self, stage: str) -> str:
        """``[compress 2:01, ~2:39 left of its 4:40] demo 3:12 of 12:00``."""
        rec, done = self.stages[stage], self.stage_elapsed(stage)
        if rec.allotted_s is None:
            return f"[{stage} {clock_text(done)}] demo {clock_text(self.elapsed())}"
        rest = rec.allotted_s - done
        left = f"~{clock_text(rest)} left of its {clock_text(rec.allotted_s)}" if rest >= 0 else \
            f"{clock_text(-rest)} over its {clock_text(rec.allotted_s)}"
        return f"[{stage} {clock_text(done)}, {left}] demo {clock_text(self.elapsed())} of {clock_text(self.total_s)}"


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


# --------------------------------------------------------------------------- sizing arithmetic
def fit_count(seconds: float, each_s: float, *, fixed_s: float = 0.0, lo: int = 1, hi: int | None = None) -> int:
    """How many units of ``each_s`` seconds fit in ``seconds`` after ``fixed_s``,
    clamped to [lo, hi] (``lo`` wins: below it the work is not worth doing, and the
    caller records the overrun)."""
    if each_s <= 0:
        return hi if hi is not None else lo
    n = math.floor(max(0.0, seconds - fixed_s) / each_s)
    if hi is not None:
        n = min(n, hi)
    return max(lo, n)


@dataclass
class TrainingPlan:
    """Steps of the two compress training phases, and whether the teacher evaluates dev
    after each epoch to keep its best epoch."""
    teacher_steps: int
    ofa_steps: int
    teacher_epoch_evals: bool
    fraction: float  # of the profile's training time kept (1.0: nothing cut)
    needed_s: float  # what the profile as written would take, by the measured rates
    available_s: float
    at_floor: bool = False  # even the phases' minimums do not fit: they run, over the budget


def plan_training(available_s: float, *, teacher_steps: int, teacher_step_s: float, ofa_steps: int,
                  ofa_step_s: float, epoch_evals: int, epoch_eval_s: float, min_teacher_steps: int,
                  min_ofa_steps: int) -> TrainingPlan:
    """Fit the profile's training into ``available_s`` (the time left after the evaluations
    the results table needs). Cuts, in order: the teacher's per-epoch dev evaluations
    (the final evaluation measures the teacher anyway; only the pick of the best epoch is
    lost), then steps. Each phase first gets its minimum (capped by its profile steps); the
    time above them goes to the teacher, up to its profile steps, and only then to the OFA
    phase: the widths are distilled from the teacher, and in the quick profile teacher steps
    bought accuracy (40 -> 70 steps: +3 points) where OFA steps past 8 did not
    (benchmarks/results/teacher_learning_rate.json, ofa_steps.json)."""
    train_s = teacher_steps * teacher_step_s + ofa_steps * ofa_step_s
    evals_s = epoch_evals * epoch_eval_s
    needed = train_s + evals_s
    if needed <= available_s:
        return TrainingPlan(teacher_steps, ofa_steps, True, 1.0, needed, available_s)
    t_min, o_min = min(min_teacher_steps, teacher_steps), min(min_ofa_steps, ofa_steps)
    spare = available_s - t_min * teacher_step_s - o_min * ofa_step_s
    t = min(teacher_steps, t_min + fit_count(spare, teacher_step_s, lo=0))
    spare -= (t - t_min) * teacher_step_s
    o = min(ofa_steps, o_min + fit_count(spare, ofa_step_s, lo=0))
    kept = (t * teacher_step_s + o * ofa_step_s) / train_s if train_s > 0 else 1.0
    return TrainingPlan(t, o, False, kept, needed, available_s, at_floor=available_s < t_min * teacher_step_s
                        + o_min * ofa_step_s)


def ofa_step_ratio(widths: list[float]) -> float:
    """Cost of one OFA step in teacher fine-tune steps, from the model's arithmetic: the
    teacher's forward (1 of a train step's ~3 forward-equivalents) plus a forward and
    backward at each width, whose matmuls scale with the width. Used only to split time
    between the phases before the OFA phase can be timed; the OFA phase re-plans from its
    own measured speed."""
    return (1 + 3 * sum(widths)) / 3
