"""The time budget: its arithmetic with injected speeds, each stage's sizing on the tiny
model, the demo's record of what it cut, and the known-warning filters."""
from __future__ import annotations

import io
import json
import math
import shutil
import sys
import time
import warnings

import numpy as np
import pytest

from ofaserve.compress.step_budget import ofa_step_ratio, plan_training
from ofaserve.core.time_budget import Budget, StageRecord, clock_text, fit_count


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- arithmetic
def test_allotments_follow_the_time_left_and_the_shares():
    clock = FakeClock()
    b = Budget(100, {"a": 2, "b": 1, "c": 1}, clock=clock)
    assert b.start("a") == pytest.approx(100 * 2 / 4)
    clock.t += 40  # a finishes 10 s early: b and c share the 60 s left
    b.finish("a")
    assert b.start("b") == pytest.approx(60 * 1 / 2)
    clock.t += 45  # b overruns its 30 s by 15: c gets only what is left
    b.finish("b")
    assert b.start("c") == pytest.approx(100 - 85)
    clock.t += 20
    b.finish("c")
    rec = b.record()
    assert rec["within_budget"] is False and rec["elapsed_s"] == 105
    assert [rec["stages"][n]["used_s"] for n in "abc"] == [40, 45, 20]
    assert b.allot("c") == 0.0  # never negative


def test_a_reserve_is_a_floor_the_stages_before_cannot_eat():
    """The demo reserves the bench's minimum before compress sizes itself: the earlier
    stages share only the time above it, and the bench gets it even after they overran."""
    clock = FakeClock()
    b = Budget(100, {"a": 2, "b": 1, "c": 1}, clock=clock)
    b.reserve("c", 30)
    assert b.start("a") == pytest.approx((100 - 30) * 2 / 4)  # a's share shrinks, not c's floor
    clock.t += 35
    b.finish("a")
    assert b.start("b") == pytest.approx((65 - 30) * 1 / 2)
    clock.t += 17.5
    b.finish("b")
    assert b.start("c") == pytest.approx(30 + 17.5) == pytest.approx(b.left())  # its floor and its share
    late = Budget(100, {"a": 2, "b": 1, "c": 1}, clock=clock)
    late.reserve("c", 30)
    late.start("a")
    clock.t += 90  # a overran by 55 s: b gets nothing above the reserve, c still gets its 30 s
    late.finish("a")
    assert late.start("b") == 0.0
    late.finish("b")
    assert late.start("c") == pytest.approx(30) and late.left() == pytest.approx(10)
    assert late.record()["stages"]["c"]["reserve_s"] == 30 and late.record()["stages"]["a"]["reserve_s"] == 0


def test_no_budget_allots_nothing_and_cuts_nothing():
    b = Budget(None, {"a": 1})
    assert b.start("a") is None and b.record()["within_budget"] is None
    assert "demo" in b.progress_line("a") and "left" not in b.progress_line("a")


def test_progress_line_says_time_left_then_overrun():
    clock = FakeClock()
    b = Budget(600, {"a": 1}, clock=clock)
    b.start("a")
    clock.t += 125
    assert b.progress_line("a") == "[a 2:05, ~7:55 left of its 10:00] demo 2:05 of 10:00"
    clock.t += 600
    assert "over its 10:00" in b.progress_line("a")
    assert clock_text(3725) == "1:02:05" and clock_text(-61) == "-1:01"


def test_cuts_are_recorded_per_stage_and_in_order():
    b = Budget(10, {"x": 1, "y": 1})
    b.cut("y", "steps", 100, 50, "slow")
    b.cut("x", "passes", 3, 1, "slower")
    assert [c.what for c in b.cuts()] == ["passes", "steps"]  # stage order
    assert b.record()["stages"]["y"]["cuts"][0] == {"stage": "y", "what": "steps", "default": 100, "chosen": 50,
                                                    "why": "slow", "at_floor": False}
    assert isinstance(b.stages["x"], StageRecord)


def test_fit_count_clamps():
    assert fit_count(100, 10, fixed_s=30) == 7
    assert fit_count(100, 10, hi=5) == 5
    assert fit_count(5, 10, lo=3) == 3  # below the floor the caller overruns, visibly
    assert fit_count(-50, 10, lo=0) == 0


def test_plan_keeps_the_profile_when_it_fits():
    p = plan_training(1000, teacher_steps=100, teacher_step_s=2, ofa_steps=50, ofa_step_s=6, epoch_evals=2,
                      epoch_eval_s=30, min_teacher_steps=40, min_ofa_steps=8)
    assert (p.teacher_steps, p.ofa_steps, p.teacher_epoch_evals, p.fraction) == (100, 50, True, 1.0)
    assert p.needed_s == 100 * 2 + 50 * 6 + 2 * 30


def test_plan_drops_the_epoch_evaluations_first():
    needed_training = 100 * 2 + 50 * 6
    p = plan_training(needed_training + 10, teacher_steps=100, teacher_step_s=2, ofa_steps=50, ofa_step_s=6,
                      epoch_evals=2, epoch_eval_s=30, min_teacher_steps=40, min_ofa_steps=8)
    assert (p.teacher_steps, p.ofa_steps, p.teacher_epoch_evals) == (100, 50, False)


def test_plan_gives_the_minimums_then_the_teacher_then_the_ofa_phase():
    training = 100 * 2 + 50 * 6
    kw = dict(teacher_steps=100, teacher_step_s=2, ofa_steps=50, ofa_step_s=6, epoch_evals=2, epoch_eval_s=30,
              min_teacher_steps=40, min_ofa_steps=8)
    p = plan_training(training / 2, **kw)  # 250 s: minimums 128 s, the teacher's 60 more steps 120 s
    assert (p.teacher_steps, p.ofa_steps, p.teacher_epoch_evals, p.at_floor) == (100, 8, False, False)
    assert p.fraction == pytest.approx((100 * 2 + 8 * 6) / training)
    p = plan_training(150, **kw)  # 22 s above the minimums: 11 more teacher steps, nothing for OFA
    assert (p.teacher_steps, p.ofa_steps) == (51, 8)
    p = plan_training(200 + 8 * 6 + 6 * 3 + 5, **kw)  # the teacher whole, then 3 more OFA steps
    assert (p.teacher_steps, p.ofa_steps) == (100, 11)
    floor = plan_training(1, teacher_steps=100, teacher_step_s=2, ofa_steps=50, ofa_step_s=6, epoch_evals=2,
                          epoch_eval_s=30, min_teacher_steps=40, min_ofa_steps=8)
    assert (floor.teacher_steps, floor.ofa_steps, floor.at_floor) == (40, 8, True)  # each phase's own floor
    short = plan_training(1, teacher_steps=30, teacher_step_s=2, ofa_steps=5, ofa_step_s=6, epoch_evals=1,
                          epoch_eval_s=30, min_teacher_steps=40, min_ofa_steps=8)
    assert (short.teacher_steps, short.ofa_steps) == (30, 5)  # a floor never adds steps to the profile


def test_ofa_step_ratio_counts_the_teacher_forward_and_each_width():
    assert ofa_step_ratio([1.0]) == pytest.approx(4 / 3)  # teacher forward + one train step
    assert ofa_step_ratio([1.0, 0.5]) == pytest.approx((1 + 3 * 1.5) / 3)


def test_step_sizer_plans_after_its_probe_and_shrinks_when_behind():
    from ofaserve.compress import step_budget
    from ofaserve.compress.train import PhaseStats

    seen = []

    def plan(s_per_step, step):
        seen.append((s_per_step, step))
        return 40, time.monotonic() + 3600

    sizer = step_budget.StepSizer("t", plan, min_total=8)
    stats = PhaseStats()
    total, step = 100, 0
    for _ in range(step_budget.PROBE_STEPS + 1):
        step += 1
        stats.steps += 1
        stats.seconds += 0.5 if step > 1 else 5.0  # the first step (kernel set-up) is not timed
        total = sizer(step, stats, total)
    assert total == 40 and seen == [(0.5, step_budget.PROBE_STEPS + 1)]
    sizer.deadline = time.monotonic() + 3 * 0.5  # the machine slowed: only ~3 more steps fit
    step += 1
    stats.steps += 1
    stats.seconds += 0.5
    total = sizer(step, stats, total)
    assert step + 2 <= total <= step + 3 and sizer.shrunk


def test_step_sizer_projects_from_recent_steps_and_gives_steps_back():
    """First steps slow (new shapes), later ones fast: the plan made from the slow probe is
    too short, and the guard, projecting from the last RATE_WINDOW steps, grows the phase
    back toward what fits, never past the phase's own unbudgeted total."""
    from ofaserve.compress import step_budget
    from ofaserve.compress.train import PhaseStats

    t0 = time.monotonic()

    def plan(s_per_step, step):  # 20 s to the deadline: at the probe's 2 s/step, 10 more steps
        return step + int(20 // s_per_step), t0 + 20

    sizer = step_budget.StepSizer("t", plan, min_total=4)
    stats, total, step = PhaseStats(), 60, 0
    for _ in range(step_budget.PROBE_STEPS + 1):
        step, stats.steps = step + 1, stats.steps + 1
        stats.seconds += 2.0
        total = sizer(step, stats, total)
    assert total == step + 10 and sizer.planned == total
    for _ in range(step_budget.RATE_WINDOW):  # now 0.5 s/step (the clock is not advanced: no time used)
        step, stats.steps = step + 1, stats.steps + 1
        stats.seconds += 0.5
        total = sizer(step, stats, total)
    assert sizer.s_per_step == pytest.approx(0.5)
    assert step + 38 <= total <= step + 40  # ~20 s left at 0.5 s/step
    assert sizer.total == total and not sizer.shrunk
    sizer.deadline = t0 + 3600
    step, stats.steps = step + 1, stats.steps + 1
    stats.seconds += 0.5
    assert sizer(step, stats, total) == 60  # never past the phase's own steps


def test_budget_record_reports_the_steps_trained_not_the_first_plan():
    """A plan cut the teacher to 50 steps and the guard trained 53: the cut says 53 and
    why; a phase whose plan kept the profile but the guard then shrank gets its own cut;
    record() can be called again without stacking the notes."""
    from types import SimpleNamespace

    from ofaserve.compress import step_budget
    from ofaserve.core.time_budget import Cut

    box = step_budget.CompressStepBudget(100)
    box.run = SimpleNamespace(scorer=SimpleNamespace(expected_setup_s=lambda: 3.0))
    box.cuts = [Cut("compress", "teacher steps", 126, 50, "the plan")]
    for name, planned, total in (("teacher", 50, 53), ("ofa", 63, 60)):
        sizer = step_budget.StepSizer(name, lambda s, k: (0, 0.0), min_total=8)
        sizer.planned, sizer.total, sizer.max_total, sizer.s_per_step = planned, total, 63, 1.5
        box.sizers[name], box.plans[name] = sizer, {}
    for _ in range(2):
        cuts = {c["what"]: c for c in box.record()["cuts"]}
        assert cuts["teacher steps"]["chosen"] == 53 and cuts["teacher steps"]["why"].count("planned 50, trained 53") == 1
        assert (cuts["OFA steps"]["default"], cuts["OFA steps"]["chosen"]) == (63, 60)
    assert box.plans["teacher"]["steps_trained"] == 53 and box.cuts[0].chosen == 50


def test_bench_request_count_fits_the_time_left_down_to_its_floor():
    from ofaserve.benchmarks import request_budget

    lat = {("m1", "fixed"): 100.0, ("m2", "fixed"): 50.0}  # ms
    per_request = (0.1 + 0.05) * (1 + 1)  # one concurrency level + one baseline runtime per cell
    fixed = (0.1 + 0.05) * (1 * 3 * 3 + 1 * 3) + request_budget.CPU_SAMPLE_S  # warm-up, warm calls, the CPU sample
    kw = dict(concurrency_levels=1, rounds=3, warmup=3, baselines={k: 1 for k in lat})
    n, rec = request_budget.fit_requests(request_budget.REPORT_RESERVE_S + fixed + 25 * per_request + 0.01, lat, requested=30, **kw)
    assert n == 25 and "cut" in rec and not rec["at_floor"] and "over_budget_s" not in rec
    n, rec = request_budget.fit_requests(request_budget.REPORT_RESERVE_S + fixed + 12 * per_request + 0.01, lat, requested=30, **kw)
    assert n == request_budget.MIN_REQUESTS == 20  # room for 12: the ratios need 20, the run overruns
    assert rec["at_floor"] and "kept the minimum of 20" in rec["cut"] and "allowed 12" in rec["cut"]
    assert rec["over_budget_s"] == pytest.approx(8 * per_request, abs=0.1)
    n, rec = request_budget.fit_requests(1000, lat, requested=30, **kw)
    assert n == 30 and "cut" not in rec
    n, rec = request_budget.fit_requests(0, lat, requested=5, **kw)  # fewer asked for than the floor: that many
    assert n == 5 and "cut" not in rec and rec["at_floor"]


def test_bench_floor_seconds_is_what_its_sizing_needs():
    """What the demo sets aside (floor_seconds, before the bench starts) is what the bench's
    own sizing (fit_requests, after its set-up and probe) needs for the floor: no more cut."""
    from ofaserve.benchmarks import request_budget

    lat = {("m1", "fixed"): 400.0, ("m1", "real"): 90.0, ("m2", "fixed"): 280.0, ("m2", "real"): 65.0}
    kw = dict(concurrency_levels=1, rounds=3, warmup=3, baselines={k: 1 for k in lat})
    floor = request_budget.floor_seconds(lat, requests=request_budget.MIN_REQUESTS, **kw)
    probe_s = sum(lat.values()) / 1000 * (1 + request_budget.PROBE_REQUESTS)
    n, rec = request_budget.fit_requests(floor - request_budget.SETUP_RESERVE_S - probe_s + 0.01, lat, requested=30, **kw)
    assert n == request_budget.MIN_REQUESTS and not rec["at_floor"] and "over_budget_s" not in rec
    assert request_budget.floor_seconds(lat, requests=30, **kw) - floor == pytest.approx(10 * sum(lat.values()) / 1000 * 2)
    gflops, precision = request_budget.matmul_gflops(seconds=0.05)
    assert 0 < gflops < 1e5 and precision in ("f32", "bf16")  # a speed this CPU can have, as OpenVINO runs it


def test_export_dev_subset_is_sized_from_the_first_pass():
    from ofaserve.export import check_budget

    from ofaserve.core.tasks import Split

    texts = [f"s{i}" for i in range(1000)]
    dev = Split(texts, np.arange(1000) % 2)
    box = check_budget.ExportCheckBudget(100)
    box.t0 = time.monotonic() - 40  # 60 s left
    later = box.later_dev(dev, first_pass_s=10.0, passes=4)  # 10 ms/sentence x 4 passes: 1,500 fit
    assert later.index is None and later.record["dev_sentences"] == 1000
    box.t0 = time.monotonic() - 92  # 8 s left: 8 / (0.01 x 4) = 200, below the floor
    later = box.later_dev(dev, first_pass_s=10.0, passes=4)
    assert len(later.index) == check_budget.MIN_DEV_SENTENCES == len(later.dev)
    assert later.index[0] == 0 and later.index[-1] == 999 and np.all(np.diff(later.index) > 0)
    assert later.dev.texts[1] == texts[later.index[1]] and "kept the minimum of 300" in later.record["cut"]
    assert later.record["at_floor"] is True
    box.t0 = time.monotonic() - 80  # 20 s left: 500 fit, above the floor: a cut, not an overrun
    above = box.later_dev(dev, first_pass_s=10.0, passes=4).record
    assert "kept the minimum" not in above["cut"] and above["at_floor"] is False
    box.t0 = time.monotonic() - 92
    assert later.logits(np.arange(1000)).tolist() == later.index.tolist()
    test = Split([f"t{i}" for i in range(500)], np.arange(500) % 2)  # the variants' test report: the same share
    assert len(later.same_share(test)) == round(500 * check_budget.MIN_DEV_SENTENCES / 1000)
    assert later.same_share(None) is None and check_budget.LaterDev(dev, None, None).same_share(test) is test
    with_test = check_budget.later_passes(packed=True, fp16=False, bf16=True, int8=False, precisions=True, test_ratio=0.5)
    assert with_test == 1 + 1 + 0.5 * (1 + 1)  # packed check, bf16 gate, fp32 and bf16 on half-size test


def test_parity_runtimes_keep_the_reference_and_the_dev_runtime():
    from ofaserve.core.errors import OfaserveError
    from ofaserve.export import check_budget

    available = ["supernet", "sub_model", "paddle_static", "onnx", "openvino_packed"]
    assert check_budget.runtimes_to_check(available, None, "onnx") == available
    assert check_budget.runtimes_to_check(available, ["openvino_packed"], "onnx") == ["supernet", "onnx", "openvino_packed"]
    with pytest.raises(OfaserveError, match="unknown runtime"):
        check_budget.check_parity_runtimes(["openvino_packd"])


# --------------------------------------------------------------------------- warnings
def _warn_from(module: str, message: str, category=UserWarning) -> None:
    warnings.warn_explicit(message, category, filename=module.replace(".", "/") + ".py", lineno=1,
                           module=module, registry={})


def test_known_warnings_are_silenced_only_from_their_module():
    from ofaserve.core import quiet

    patched = "The `forward` method of <class 'BertModel'> is patched and the patch might be old"
    with quiet.known_noise_silenced(), warnings.catch_warnings(record=True) as got:
        _warn_from("paddlenlp.transformers.utils", patched)
        _warn_from("paddle.utils.cpp_extension.extension_utils", "No ccache found. Please be aware")
        _warn_from("paddle.base.framework", '\x1b[93m\nWarning:\nAPI "paddle.base.dygraph.tensor_patch_methods'
                                            '.gradient" is deprecated since 2.1.0')
        _warn_from("ofaserve.compress.train", patched)  # the same words from our code: shown
        _warn_from("paddlenlp.transformers.utils", "something new")  # another warning of that module: shown
        _warn_from("paddle.base.framework", "API foo is deprecated")
    assert [str(w.message) for w in got] == [patched, "something new", "API foo is deprecated"]
    with warnings.catch_warnings(record=True) as after:  # outside the block the filters are gone
        _warn_from("paddlenlp.transformers.utils", patched)
    assert len(after) == 1


def test_the_patched_forward_warning_is_silenced_at_its_real_source():
    """paddlenlp warns when compress patches BertModel.forward; inside the block it does not."""
    from ofaserve.compress import paddleslim_compat as compat
    from ofaserve.core import quiet

    def patch_and_record():
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("default")  # every location once, as a fresh process shows them
            with compat.patched():
                pass
        return [w for w in got if "is patched" in str(w.message)]

    assert patch_and_record(), "paddlenlp no longer warns: drop its entry from quiet.KNOWN_WARNINGS"
    with quiet.known_noise_silenced():
        with warnings.catch_warnings(record=True) as got:
            with compat.patched():
                pass
    assert not [w for w in got if "is patched" in str(w.message)]


def test_known_prints_are_dropped_and_others_kept(monkeypatch):
    from ofaserve.core import quiet

    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    with quiet.known_prints_dropped():
        print("WARNING: OMP_NUM_THREADS set to 2, not 1. The computation speed ...", file=sys.stderr)
        print("PLEASE USE OMP_NUM_THREADS WISELY.", file=sys.stderr)
        print("a real problem", file=sys.stderr)
    assert out.getvalue() == "a real problem\n"
    with pytest.raises(RuntimeError):
        with quiet.known_prints_dropped():
            print("printed before the error", file=sys.stderr)
            raise RuntimeError
    assert out.getvalue().endswith("printed before the error\n")


def _stderr_of(code: str) -> bytes:
    import subprocess
    import textwrap

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=60,
                          check=True).stderr


def test_known_native_lines_are_dropped_and_others_kept():
    """glog writes to file descriptor 2 directly; only the known line goes, in any chunking."""
    got = _stderr_of("""
        import os, time
        from ofaserve.core.quiet import known_native_lines_dropped
        known = b"W1130 17:02:36.157928 24631 eager_utils.cc:3584] Paddle static graph(PIR) not support input out tensor for now!!!!!\\n"
        with known_native_lines_dropped():
            os.write(2, b"before\\n" + known)
            os.write(2, known[:9]); time.sleep(0.2); os.write(2, known[9:])  # split mid-header
            os.write(2, b"W1130 17:02:36.2 24631 other.cc:1] a new native warning\\n")
            os.write(2, b"\\rteacher:  10%")  # a progress bar: no newline, passed on at once
            time.sleep(0.2)
            os.write(2, b"\\rteacher: 100%\\n")
        os.write(2, b"after\\n" + known)  # outside the block: untouched
    """)
    assert got == (b"before\nW1130 17:02:36.2 24631 other.cc:1] a new native warning\n\rteacher:  10%"
                   b"\rteacher: 100%\nafter\n" + got.split(b"after\n")[1])
    assert b"not support input out tensor" in got.split(b"after\n")[1]


def test_a_terminal_stays_a_terminal_while_native_lines_are_filtered():
    """Progress bars draw only on a terminal (tqdm asks isatty): the filter must keep one."""
    import os
    import pty
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import os
        from ofaserve.core.quiet import known_native_lines_dropped
        with known_native_lines_dropped():
            os.write(2, b"W1130 17:02:36.157928 24631 eager_utils.cc:3584] Paddle static graph(PIR) not support input out tensor for now!!!!!\\n")
            os.write(2, b"isatty %d\\n" % os.isatty(2))
    """)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave)
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    proc.wait(timeout=60)
    os.close(master)
    assert b"isatty 1" in got and b"not support input out tensor" not in got


def _terminal_rows(code: str, columns: int = 120) -> list[str]:
    """The rows a terminal shows after ``code`` ran with stdout and stderr on it (a
    pseudo-terminal read through pyte, a VT100 emulator), blank rows left out."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    import pyte

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the last writer closed
            break
        if not chunk:
            break
        got += chunk
    assert proc.wait(timeout=60) == 0, got.decode(errors="replace")
    os.close(master)
    screen = pyte.Screen(columns, 1000)
    pyte.ByteStream(screen).feed(got)
    return [row.rstrip() for row in screen.display if row.strip()]


def test_status_lines_and_a_progress_bar_share_a_terminal_without_interleaving():
    """The demo's heartbeat writes its line while a stage's tqdm bar redraws on the same
    terminal, with the stage's stdout sent to the demo's log and both descriptors filtered
    (as the demo runs compress): every status line is a whole row, the bar its own row."""
    import re
    import textwrap

    rows = _terminal_rows(textwrap.dedent("""
        import contextlib, os, sys, time
        from tqdm.auto import tqdm
        from ofaserve.core.status_line import Heartbeat, print_above_bars
        from ofaserve.core.time_budget import Budget
        from ofaserve.core.quiet import known_native_lines_dropped
        screen = sys.stdout
        budget = Budget(60, {"compress": 1})
        budget.start("compress")
        with open(os.devnull, "w") as log, contextlib.redirect_stdout(log), known_native_lines_dropped():
            with Heartbeat(budget, "compress", 0.03, lambda line: print_above_bars(line, screen)):
                bar = tqdm(total=60, desc="teacher", unit="step", dynamic_ncols=True)
                for _ in range(60):
                    time.sleep(0.01)
                    bar.update(1)
                bar.close()
        print_above_bars("=== compress: done", screen)
    """))
    status = re.compile(r"\[compress \d:\d\d, ~\d:\d\d left of its 1:00\] demo \d:\d\d of 1:00")
    beats = [r for r in rows if status.fullmatch(r)]
    assert len(beats) >= 5, rows  # the heartbeat ran while the bar drew
    others = [r for r in rows if not status.fullmatch(r)]
    assert others[:-2] == [] and others[-2].startswith("teacher: 100%|") and others[-1] == "=== compress: done", rows


def test_known_native_stdout_lines_are_dropped_and_others_kept():
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import os
        from ofaserve.core.quiet import known_native_lines_dropped
        with known_native_lines_dropped():
            os.write(1, b"[Paddle2ONNX] Start parsing the Paddle model file...\\n")
            print("exported width 0.5", flush=True)
            os.write(1, b"[Paddle2ONNX] Use opset_version = 14 for ONNX export.\\n[Paddle2ONNX] Oops: op foo unsupported\\n")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True).stdout
    assert out == b"exported width 0.5\n[Paddle2ONNX] Oops: op foo unsupported\n"


def test_demo_logging_keeps_stage_lines_in_the_file_and_warnings_on_screen(tmp_path):
    log = tmp_path / "demo.log"
    got = _stderr_of(f"""
        import logging, sys
        from ofaserve.core.stage_cli import latest_log_line, log_to_file, setup_logging
        log_to_file({str(log)!r})
        setup_logging()  # a stage CLI run by the demo: leaves the demo's set-up alone
        logging.getLogger("ofaserve.compress").info("teacher step 3/9")
        logging.getLogger("paddleslim").info("library chatter")
        assert latest_log_line() == "teacher step 3/9", latest_log_line()
        assert latest_log_line(forget=True) == "teacher step 3/9" and latest_log_line() == ""
        logging.getLogger("ofaserve.export").warning("a real warning")
    """)
    text = log.read_text()
    assert "INFO ofaserve.compress: teacher step 3/9" in text and "a real warning" in text
    assert b"teacher step" not in got and b"a real warning" in got


def test_stage_logs_reach_stderr_after_paddle_is_imported_quietly():
    """paddle adds a root log handler bound to the stderr of its import; imported inside
    known_prints_dropped that is a buffer, and every INFO line of a stage vanished."""
    got = _stderr_of("""
        import logging
        from ofaserve.core.quiet import known_prints_dropped
        with known_prints_dropped():
            import paddle
        assert logging.getLogger().handlers, "paddle no longer adds a root handler: this test is moot"
        logging.getLogger("ofaserve.compress").warning("a stage's line")
    """)
    assert b"a stage's line" in got


def test_chatty_library_logs_are_quieted_but_warnings_kept(caplog):
    import logging

    from ofaserve.core import quiet

    name = next(iter(quiet.KNOWN_CHATTY_LOGGERS))
    lg = logging.getLogger(name)
    with caplog.at_level(logging.INFO, logger=name):
        with quiet.known_noise_silenced():
            lg.setLevel(logging.INFO)  # as the library does when it is imported
            lg.info("Start to get pruned params, please wait...")
            lg.warning("a real warning")
        lg.info("after the block")
    assert [r.getMessage() for r in caplog.records] == ["a real warning", "after the block"]


# --------------------------------------------------------------------------- stages on the tiny model
def _tiny_options(root, ckpt, train, dev, **kw):
    from ofaserve.compress.pipeline import CompressOptions

    return CompressOptions(output_dir=str(root), model_name_or_path=str(ckpt), train_file=str(train),
                           dev_file=str(dev), width_mult_list=[1.0, 0.75, 0.5], max_seq_length=32, batch_size=16,
                           num_teacher_epochs=3, num_train_epochs=2, importance_samples=32, learning_rate=1e-3,
                           teacher_learning_rate=1e-3, progress=False, logging_steps=0, **kw)


def test_compress_budget_that_cuts_nothing_changes_nothing(tmp_path, tiny_checkpoint):
    from ofaserve.compress.pipeline import compress_model

    plain = compress_model(_tiny_options(tmp_path / "plain", *tiny_checkpoint)).to_dict()
    timed = compress_model(_tiny_options(tmp_path / "timed", *tiny_checkpoint, time_budget_s=3600)).to_dict()
    assert "budget" not in plain and timed["budget"]["cuts"] == []
    assert timed["results"] == plain["results"]
    assert timed["budget"]["plans"]["teacher"]["fraction"] == 1.0
    import paddle  # same weights (the files differ: paddle pickles its per-process tensor names)
    for ckpt in ("teacher", "supernet"):
        a = paddle.load(str(tmp_path / "plain" / plain["checkpoints"][ckpt]))
        b = paddle.load(str(tmp_path / "timed" / timed["checkpoints"][ckpt]))
        assert a.keys() == b.keys()
        assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a), ckpt


def test_compress_tiny_budget_cuts_steps_but_not_the_results_table(tmp_path, tiny_checkpoint, monkeypatch):
    from ofaserve.compress import step_budget
    from ofaserve.compress.pipeline import compress_model

    monkeypatch.setattr(step_budget, "MIN_TEACHER_STEPS", 10)  # below the tiny profile's 18, so it is a cut
    m = compress_model(_tiny_options(tmp_path / "out", *tiny_checkpoint, time_budget_s=0.5)).to_dict()
    cuts = {c["what"]: c for c in m["budget"]["cuts"]}
    profile_teacher = 3 * math.ceil(96 / 16)
    assert cuts["teacher steps"]["default"] == profile_teacher
    assert cuts["teacher steps"]["chosen"] == m["phases"]["teacher"]["steps"] == step_budget.MIN_TEACHER_STEPS
    assert cuts["OFA steps"]["chosen"] == m["phases"]["ofa"]["steps"] == step_budget.MIN_OFA_STEPS
    assert "kept the minimum of" in cuts["teacher steps"]["why"] and "kept the minimum of" in cuts["OFA steps"]["why"]
    assert cuts["teacher steps"]["at_floor"] and cuts["OFA steps"]["at_floor"]
    assert "teacher per-epoch dev evaluations (best-epoch pick)" in cuts
    assert m["phases"]["teacher"]["best_dev"] is None
    assert m["budget"]["used_s"] > 0.5  # honest: the minimum overran the budget
    assert set(m["results"]["widths"]) == {"1.0", "0.75", "0.5"}
    assert all("dev" in r for r in [m["results"]["teacher"], *m["results"]["widths"].values()])
    measured = m["budget"]["measured"]
    assert measured["teacher_s_per_step"] > 0 and measured["ofa_s_per_step"] > 0
    # widths are priced from the teacher's seconds per token; each model adds its static set-up
    assert set(measured["eval_s_per_1k_tokens"]) == {"teacher"}
    assert measured["eval_setup_s_per_model"] > 0


def test_lr_schedule_is_the_same_for_a_fixed_and_a_callable_length():
    import paddle

    from ofaserve.compress.train import make_optimizer

    def lrs(total):
        layer = paddle.nn.Linear(2, 2)
        opt, sched = make_optimizer(layer.parameters(), 1e-3, total)
        out = []
        for _ in range(12):
            out.append(opt.get_lr())
            sched.step()
        return out

    assert lrs(10) == lrs(lambda: 10)


def test_export_under_a_budget_checks_the_served_runtimes_on_a_subset(tmp_path, tiny_compress_dir, monkeypatch):
    from ofaserve.export import check_budget, export_subnet

    monkeypatch.setattr(check_budget, "MIN_DEV_SENTENCES", 10)
    m = export_subnet(str(tiny_compress_dir), str(tmp_path / "e"), 0.75, progress=False, time_budget_s=0.1,
                      parity_runtimes=["openvino_packed"], fp16=False, fuse_attention=False, int8=False).to_dict()
    p = m["parity"]
    assert list(p["shapes"]["16x128"]["max_abs_diff"]) == ["onnx", "openvino_packed"]
    assert set(p["runtimes_not_checked"]) == {"sub_model", "paddle_static", "openvino_f32", "onnx_packed"}
    n_dev = p["dev_score"]["n"]
    assert p["dev_score"]["abs_diff"] <= p["dev_score"]["tolerance"]  # the whole dev set, as always
    assert p["budget"]["dev_sentences"] == 10 < n_dev and "cut" in p["budget"]
    assert p["packed_dev"]["runtime"] == "openvino_packed" and p["packed_dev"]["n"] == 10
    assert "skipped" in m["precisions"]["onnx_fp16"] and m["precisions"]["fp32"]["dev_sentences"] == 10
    assert "onnx_ort_fused" not in m["artifacts"]


@pytest.mark.integration
def test_demo_with_a_tiny_budget_records_what_it_cut(tmp_path, tiny_compress_dir, capsys):
    """A 3-second budget: every stage overruns, but the bench still gets the minimum that
    was set aside for it, and its report holds at least 20 measured requests per cell and
    an interval for every ratio."""
    from ofaserve import demo
    from ofaserve.benchmarks import stats

    work = tmp_path / "demo"
    shutil.copytree(tiny_compress_dir, work / "compress")
    argv = ["--workdir", str(work), "--width_mult", "0.75", "--seq_len", "32",
            "--budget_min", "0.05", "--progress_s", "2"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((work / "summary.json").read_text())
    rec = summary["budget"]
    assert rec["budget_s"] == pytest.approx(3) and rec["within_budget"] is False
    assert rec["stages"]["compress"]["reused"] is True
    for name in ("export", "repo", "serve", "bench"):
        assert rec["stages"][name]["allotted_s"] is not None and rec["stages"][name]["used_s"] > 0
    bench_rec = rec["stages"]["bench"]
    assert bench_rec["reserve_s"] == bench_rec["measured"]["floor"]["floor_s"] > 3  # priced before compress ...
    assert bench_rec["allotted_s"] >= bench_rec["reserve_s"]  # ... and not eaten by the stages that overran
    cut = {(c["stage"], c["what"]) for c in rec["cuts"]}
    assert ("export", "parity runtimes") in cut
    report = json.loads((work / "bench" / "report.json").read_text())
    assert report["settings"]["requests"] >= stats.MIN_RATIO_REQUESTS
    assert all(r["latency_ms"]["n"] >= stats.MIN_RATIO_REQUESTS for r in report["results"] + report["baselines"])
    entries = stats.ratio_entries(report["comparisons"])
    assert entries and all(e["ci95"] and not e["few_requests"] for e in entries)
    assert " faster than " in out and "(95% CI " in out and "not a measurement" not in out
    for export in summary["exports"].values():
        assert export["manifest"]["options"]["parity_runtimes"] == demo.SERVED_PARITY_RUNTIMES
    for c in rec["cuts"]:  # every cut is printed, with its reason
        assert f"{c['what']}: {c['default']} -> {c['chosen']} ({c['why']})" in out
    assert "=== Time budget 0:03: used" in out and "(OVER by" in out and "reserved)" in out
    assert "] demo " in out  # progress lines while a stage ran
    assert "=== Accuracy per width" in out and "| teacher |" in out


def test_a_model_that_did_not_learn_is_called_out():
    """Every width at the majority-class rate says nothing about compression: say so."""
    from ofaserve.core.manifests import CompressManifest

    def manifest(teacher_dev: float) -> CompressManifest:
        return CompressManifest.from_dict({
            "stage": "compress", "labels": ["rotten", "fresh"], "model_config": {}, "checkpoints": {},
            "width_mult_list": [1.0],
            "results": {"teacher": {"dev": {"accuracy": teacher_dev}}, "majority_class": {"dev": 0.609}}})

    assert "did not learn" in manifest(0.609).learning_warning()
    assert "did not learn" in manifest(0.615).learning_warning()
    assert manifest(0.80).learning_warning() is None


def test_a_regression_model_that_did_not_learn_is_called_out():
    from ofaserve.core.manifests import CompressManifest
    from ofaserve.core.tasks import TaskSpec, TaskType

    def manifest(pearson: float) -> CompressManifest:
        return CompressManifest(task_spec=TaskSpec("sts-b", TaskType.REGRESSION, (), True, ("pearson", "spearman")),
                                results={"teacher": {"dev": {"pearson": pearson, "spearman": pearson}},
                                         "majority_class": {}})

    assert "did not learn" in manifest(0.02).learning_warning()
    assert manifest(0.6).learning_warning() is None


def test_step_sizer_logs_only_large_moves_at_info(caplog, monkeypatch):
    """Step times that alternate with each batch's padded length move the guard's total by
    a step or two at most steps: those moves go to DEBUG; a move of LOG_FRACTION of the
    last announced total (at least LOG_MIN_STEPS) is announced at INFO."""
    import logging

    from ofaserve.compress import step_budget
    from ofaserve.compress.train import PhaseStats

    clock = [0.0]
    monkeypatch.setattr(step_budget.time, "monotonic", lambda: clock[0])
    sizer = step_budget.StepSizer("t", lambda s, k: (k + int(60 // s), 60 + clock[0]), min_total=4)
    stats, total, step = PhaseStats(), 500, 0
    caplog.set_level(logging.DEBUG, logger="ofaserve.compress")

    def train(seconds: float) -> int:
        nonlocal step, total
        step, stats.steps = step + 1, stats.steps + 1
        stats.seconds += seconds
        clock[0] += seconds
        total = sizer(step, stats, total)
        return total

    for i in range(step_budget.PROBE_STEPS + 1 + 3 * step_budget.RATE_WINDOW):
        train(1.0 + (0.3 if i % 3 == 0 else -0.15))  # noisy around 1 s/step: the total wobbles
    moves = [r for r in caplog.records if "plan (" in r.getMessage()]
    assert moves and all(r.levelno == logging.DEBUG for r in moves)
    for _ in range(step_budget.RATE_WINDOW):  # now twice as fast: many more steps fit, announced
        train(0.5)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "ahead of plan" in r.getMessage()]
    assert info and sizer.logged == int(info[-1].split("-> ")[1].split()[0])


def test_eval_price_comes_from_deves_own_batches_spread_over_its_lengths(monkeypatch):
    """The price of an evaluation pass is timed on dev's own length-sorted batches (one
    untimed first, for kernel set-up), so a cost that grows faster than the padded length
    (attention) is priced near what the whole pass costs."""
    from types import SimpleNamespace

    from ofaserve.compress import step_budget

    size = step_budget.EVAL_BATCH_SIZE
    evaluation = [(np.zeros((size, n), np.int64), np.zeros((size, n), np.int64), None, None)
                  for n in range(10, 90, 4)]  # 20 batches of rising length
    clock = [0.0]
    monkeypatch.setattr(step_budget.time, "perf_counter", lambda: clock[0])
    calls = []

    def logits_fn(ids, types):  # a row of length L costs L + L^2 / 40 (FFN + attention)
        calls.append(ids.shape[1])
        clock[0] += ids.shape[0] * (ids.shape[1] + ids.shape[1] ** 2 / 40) * 1e-6 + (1.0 if len(calls) == 1 else 0)

    box = step_budget.CompressStepBudget(100)
    box.run, box.dev_batches = SimpleNamespace(dev=None, tokenizer=None), evaluation  # as attach() leaves them
    price = box.price("teacher", logits_fn)
    assert len(calls) == 1 + step_budget.PROBE_BATCHES and calls[0] == evaluation[0][0].shape[1]
    whole = sum(b[0].shape[0] * (b[0].shape[1] + b[0].shape[1] ** 2 / 40) * 1e-6 for b in evaluation)
    tokens = sum(b[0].size for b in evaluation)
    assert price * tokens == pytest.approx(whole, rel=0.1)  # the set-up second is in no price
