"""``--time_budget_s`` for compress: size the training to the time, from measured speed.

The results table (teacher and every width on dev and test) is never cut: its
evaluations are priced first (the scorer's static-model set-up per model, plus the
teacher's seconds per token on a few dev sentences, scaled by width) and reserved. What is left trains. The teacher fine-tune times its first steps, then
plans both phases (``plan_training``: first the per-epoch dev
evaluations go, then both phases' steps by one fraction); the OFA phase times its own
first steps and takes what is left, up to the profile's steps. A guard after every step
shrinks a phase whose projected end would overrun its share (machine load changes).
Every measurement, plan and cut goes to the manifest's ``budget`` record.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.time_budget import Cut, clock_text, fit_count
from ofaserve.core.batching import EVAL_BATCH_SIZE, batches

log = logging.getLogger("ofaserve.compress")

PROBE_STEPS = 4  # steps timed before a phase is sized (after its first, which sets up kernels)
# The recent steps whose speed the guard projects with. The first steps of a phase run
# slower than later ones (warm-up); a whole-phase average keeps that slowness in every
# projection and leaves time unused.
RATE_WINDOW = 8
# The fewest steps a budget leaves a phase (capped by the profile's own steps); below them
# the results would not mean anything, so the run overruns its budget instead and says so.
# The teacher's: at the quick profile's learning rate 40 steps are the fewest measured that
# answer better than the majority class (benchmarks/results/teacher_learning_rate.json).
MIN_TEACHER_STEPS = 40
# The guard re-projects after every step, and step times vary with each batch's padded
# length: its total moves by a step or two most steps. Such moves are logged at DEBUG; a
# move this large (a fraction of the last total logged, at least LOG_MIN_STEPS) at INFO.
LOG_FRACTION = 0.1
LOG_MIN_STEPS = 3
MIN_OFA_STEPS = 8
PROBE_BATCHES = 3  # dev evaluation batches timed to price an evaluation pass
RESERVE_FRACTION = 0.03  # of the budget, for checkpoint writes and the output swap
STEP_CUTS = {"teacher": "teacher steps", "ofa": "OFA steps"}  # each phase's steps cut, by sizer name


# --------------------------------------------------------------------------- training arithmetic
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
    phase: the widths are distilled from the teacher, and in the quick profile more teacher
    steps bought accuracy where more OFA steps past the minimum did not (the records
    benchmarks/results/teacher_learning_rate.json and ofa_steps.json)."""
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


class StepSizer:
    """Called by a training loop after each trained step with (step, stats, total); returns
    the phase's total steps: unchanged until ``PROBE_STEPS`` are timed, then from
    ``plan(s_per_step, step) -> (total, deadline)``; after that a guard keeps the projected
    end at that deadline (the last moment that leaves the later work its time) from the
    speed of the last ``RATE_WINDOW`` steps: it shrinks the phase when behind (machine load
    changes, the time between steps is not in the step timings) and gives steps back, up
    to the phase's own unbudgeted total, when the steps got faster than the plan assumed."""

    def __init__(self, name: str, plan: Callable[[float, int], tuple[int, float]], min_total: int):
        self.name, self.plan, self.min_total = name, plan, min_total
        self.marks: list[tuple[int, float]] = []  # (steps, seconds) after each timed step
        self.max_total: int | None = None
        self.s_per_step: float | None = None
        self.deadline: float | None = None
        self.planned: int | None = None
        self.total: int | None = None  # the last total returned: the steps the phase trains
        self.shrunk: list[dict] = []
        self.logged: int | None = None  # the total the last INFO line announced
        self.epoch_selection = True  # the teacher's per-epoch dev evaluations (plan may drop them)

    def __call__(self, step: int, stats, total: int) -> int:
        self.total = self._total(step, stats, total)
        return self.total

    def _total(self, step: int, stats, total: int) -> int:
        if self.max_total is None:
            self.max_total = total
        self.marks.append((stats.steps, stats.seconds))
        timed = len(self.marks) - 1  # the first step sets up kernels: its time is not a rate
        if timed < PROBE_STEPS:
            return total
        (n0, s0), (n1, s1) = self.marks[max(0, len(self.marks) - 1 - RATE_WINDOW)], self.marks[-1]
        self.s_per_step = (s1 - s0) / max(1, n1 - n0)
        if self.planned is None:
            self.planned, self.deadline = self.plan(self.s_per_step, step)
            self.logged = self.planned
            return max(step, self.planned)
        fits = step + math.floor(max(0.0, self.deadline - time.monotonic()) / self.s_per_step)
        new = min(self.max_total, max(step, self.min_total, fits))
        if new < total:
            self.shrunk.append({"at_step": step, "from": total, "to": new, "s_per_step": round(self.s_per_step, 3)})
            self._log("behind", total, new)
            return new
        if new > total + 1:  # ahead by more than a step's noise
            self._log("ahead of", total, new)
            return new
        return total

    def _log(self, how: str, old: int, new: int) -> None:
        """INFO when the total moved far from the last total announced (then from that one)."""
        last = self.logged if self.logged is not None else old
        big = abs(new - last) >= max(LOG_MIN_STEPS, LOG_FRACTION * last)
        log.log(logging.INFO if big else logging.DEBUG, "%s: %s plan (%.2f s/step), %d -> %d steps", self.name,
                how, self.s_per_step, last if big else old, new)
        if big:
            self.logged = new


def _floor_note(floor: int | None) -> str:
    return f"; kept the minimum of {floor} steps (the speed measured then left time for fewer)" if floor else ""


class CompressStepBudget:
    """The budget of one compress run; ``attach`` it to the run once the data is loaded."""

    def __init__(self, budget_s: float, n_gpu: int = 1):
        if budget_s <= 0:
            raise OfaserveError(f"--time_budget_s must be > 0 (got {budget_s})")
        if n_gpu > 1:
            raise OfaserveError("--time_budget_s needs --n_gpu 1: workers sizing their steps apart would not "
                                "stay in step")
        self.budget_s, self.t0 = float(budget_s), time.monotonic()
        self.deadline = self.t0 + self.budget_s - RESERVE_FRACTION * self.budget_s
        self.measured: dict[str, Any] = {}
        self.plans: dict[str, Any] = {}
        self.cuts: list[Cut] = []
        self.sizers: dict[str, StepSizer] = {}
        self.run = None
        self.tokens: dict[str, int] = {}
        self.s_per_token: dict[str, float] = {}
        self.dev_batches: list = []  # dev as predict() batches it (attach)

    def attach(self, run) -> None:
        self.run = run
        # padded tokens of the evaluation passes, batched exactly as predict() batches: dev at
        # every checkpoint save, then the report split and any other evaluation split at the end
        def evaluation(split) -> list:
            return list(batches(split, EVAL_BATCH_SIZE, length_sorted=True, tokenizer=run.tokenizer))

        self.dev_batches = evaluation(run.dev)  # also what price() times: tokenized once
        self.tokens["dev"] = sum(b[0].size for b in self.dev_batches)
        for name, split in run.final_splits().items():  # the report split is dev when there is no test
            scored = self.dev_batches if split is run.dev else evaluation(split)
            self.tokens[f"final {name}"] = sum(b[0].size for b in scored)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    # ------------------------------------------------------------------ evaluation prices
    def price(self, key: str, logits_fn) -> float:
        """Seconds per padded token of ``logits_fn`` on ``PROBE_BATCHES`` of dev's own
        evaluation batches, spread over its lengths (a stride sample batched anew pads its
        short sentences to its longest ones, and attention grows with the square of that
        length: such a sample priced evaluations well above what they took). One more
        batch, run first, sets up the kernels and is not timed."""
        evaluation = self.dev_batches
        n = min(PROBE_BATCHES, len(evaluation))  # the middle batch of each of n equal runs of lengths
        picks = np.unique(((np.arange(n) + 0.5) * len(evaluation) / n).astype(int))
        warm = evaluation[0]
        logits_fn(warm[0], warm[1])
        tokens, seconds = 0, 0.0
        for i in picks:
            ids, types = evaluation[i][:2]
            t = time.perf_counter()
            logits_fn(ids, types)
            seconds += time.perf_counter() - t
            tokens += ids.size
        self.s_per_token[key] = seconds / max(1, tokens)
        return self.s_per_token[key]

    def eval_reserve_s(self) -> float:
        """Seconds of the evaluations the results table needs: teacher and every width on
        dev and the final splits (``_Run.final_splits``), each model first written and loaded as
        a static model by the scorer.
        Subnets cost the teacher's price scaled by width x depth (their matmuls shrink with both)."""
        teacher = self.s_per_token["teacher"]
        pass_tokens = sum(self.tokens.values())
        subnets = sum(self.s_per_token.get(s.key, teacher * s.cost) for s in self.run.subnets)
        return pass_tokens * (teacher + subnets) + self.setup_s() * (1 + len(self.run.subnets))

    def setup_s(self) -> float:
        return self.run.scorer.expected_setup_s()

    # ------------------------------------------------------------------ phases
    def teacher_sizer(self, teacher) -> StepSizer:
        """Prices the teacher's evaluations now; plans both phases once its first steps are timed."""
        run = self.run
        teacher.eval()  # no dropout: pricing must not draw from the random stream training uses
        self.price("teacher", run.scorer.teacher(teacher, version="pretrained"))
        steps_per_epoch = math.ceil(len(run.train) / run.opts.batch_size)
        profile_steps = max(1, int(round(run.opts.num_teacher_epochs * steps_per_epoch)))
        epoch_evals = math.ceil(profile_steps / steps_per_epoch)
        ofa_steps = max(1, round(run.opts.num_train_epochs * math.ceil(len(run.train) / run.opts.batch_size)))
        ratio = ofa_step_ratio([s.cost for s in run.subnets])  # the widths themselves at depth 1.0 alone

        def plan(s_per_step: float, step: int) -> tuple[int, float]:
            reserve = self.eval_reserve_s()
            reorder = math.ceil(min(run.opts.importance_samples, len(run.train)) / run.opts.batch_size) * s_per_step
            p = plan_training(self.left() - reserve - reorder, teacher_steps=profile_steps - step,
                              teacher_step_s=s_per_step, ofa_steps=ofa_steps, ofa_step_s=s_per_step * ratio,
                              epoch_evals=epoch_evals, epoch_eval_s=self.tokens["dev"] * self.s_per_token["teacher"] + self.setup_s(),
                              min_teacher_steps=max(0, min(MIN_TEACHER_STEPS, profile_steps) - step),
                              min_ofa_steps=min(MIN_OFA_STEPS, ofa_steps))
            sizer.epoch_selection = p.teacher_epoch_evals
            self.measured["teacher_s_per_step"] = round(s_per_step, 4)
            self.plans["teacher"] = {"at_step": step, "eval_reserve_s": round(reserve, 1),
                                     "ofa_s_per_step_estimate": round(s_per_step * ratio, 4),
                                     **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(p).items()}}
            self._note_plan(p, profile_steps, step, epoch_evals)
            # the teacher may run until what the OFA phase and the evaluations need is left
            return step + p.teacher_steps, self.deadline - reserve - reorder - p.ofa_steps * s_per_step * ratio

        sizer = StepSizer("teacher", plan, min_total=min(MIN_TEACHER_STEPS, profile_steps))
        self.sizers["teacher"] = sizer
        return sizer

    def _note_plan(self, p, profile_steps: int, step: int, epoch_evals: int) -> None:
        why = (f"{p.needed_s:.0f} s of training needed at the measured speed, {max(0, p.available_s):.0f} s left "
               f"after the results table's evaluations")
        if not p.teacher_epoch_evals and epoch_evals > 1:
            self.cuts.append(Cut("compress", "teacher per-epoch dev evaluations (best-epoch pick)", epoch_evals, 0,
                                 why + "; the final evaluation still measures the teacher"))
        if step + p.teacher_steps < profile_steps:
            self.cuts.append(Cut("compress", STEP_CUTS["teacher"], profile_steps, step + p.teacher_steps,
                                 why + _floor_note(step + p.teacher_steps if p.at_floor else None), p.at_floor))
        log.info("time budget: %s left; teacher %d of %d steps planned (%.0f%% of the profile's training)",
                 clock_text(self.left()), step + p.teacher_steps, profile_steps, 100 * p.fraction)

    def ofa_sizer(self, supernet, teacher, start_step: int) -> StepSizer:
        """Plans the OFA phase from its own measured speed once its first steps are timed.
        (Widths are priced from the teacher's price: timing each would cost a static model
        per width, written again after training anyway.)"""
        run = self.run
        if "teacher" not in self.s_per_token:  # a reused or resumed teacher was not priced yet
            self.price("teacher", run.scorer.teacher(teacher, version="pretrained"))
        profile_steps = max(1, int(round(run.opts.num_train_epochs
                                         * math.ceil(len(run.train) / run.opts.batch_size))))

        def plan(s_per_step: float, step: int) -> tuple[int, float]:
            reserve = self.eval_reserve_s()
            lo = max(0, min(profile_steps, MIN_OFA_STEPS) - step)
            room = self.left() - reserve
            n = fit_count(room, s_per_step, lo=lo, hi=profile_steps - step)
            self.measured["ofa_s_per_step"] = round(s_per_step, 4)
            self.plans["ofa"] = {"at_step": step, "eval_reserve_s": round(reserve, 1), "steps": step + n,
                                 "left_s": round(self.left(), 1)}
            if step + n < profile_steps:
                at_floor = fit_count(room, s_per_step, lo=0) < lo
                self.cuts.append(Cut("compress", STEP_CUTS["ofa"], profile_steps, step + n,
                                     f"{s_per_step:.2f} s/step measured, {max(0.0, room):.0f} s left after the "
                                     f"results table's evaluations" + _floor_note(step + n if at_floor else None),
                                     at_floor))
            log.info("time budget: %s left; OFA %d of %d steps planned", clock_text(self.left()), step + n,
                     profile_steps)
            return step + n, self.deadline - reserve

        sizer = StepSizer("ofa", plan, min_total=min(profile_steps, max(MIN_OFA_STEPS, start_step)))
        self.sizers["ofa"] = sizer
        return sizer

    def record(self) -> dict[str, Any]:
        """The manifest's ``budget`` record: what was measured, planned and cut."""
        cuts = [replace(c) for c in self.cuts]
        for name, sizer in self.sizers.items():
            if sizer.planned is None or sizer.total is None:
                continue
            self.plans[name]["steps_trained"] = sizer.total
            if sizer.total == sizer.planned:
                continue
            moved = (f"planned {sizer.planned}, trained {sizer.total}: re-planned while training from the speed of "
                     f"its last {RATE_WINDOW} steps ({sizer.s_per_step:.2f} s/step)")
            cut = next((c for c in cuts if c.what == STEP_CUTS[name]), None)
            if cut is not None:  # the cut says what was trained, not what the first plan said
                cut.chosen, cut.why = sizer.total, f"{cut.why}; {moved}"
            elif sizer.total < sizer.max_total:
                cuts.append(Cut("compress", STEP_CUTS[name], sizer.max_total, sizer.total, moved))
        used = time.monotonic() - self.t0
        return {"time_budget_s": self.budget_s, "used_s": round(used, 1), "within_budget": used <= self.budget_s,
                "measured": {**self.measured, "eval_tokens": self.tokens,
                             "eval_s_per_1k_tokens": {k: round(v * 1000, 4) for k, v in self.s_per_token.items()},
                             "eval_setup_s_per_model": round(self.setup_s(), 2)},
                "plans": self.plans, "cuts": [asdict(c) for c in cuts]}
