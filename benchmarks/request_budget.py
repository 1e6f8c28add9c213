"""``--time_budget_s`` for the benchmark: request counts sized from the first requests.

Before the measured rounds, each model and workload gets a few probe requests at
concurrency 1 (they also warm the server; they are not in the report's latencies). Their
mean latency prices a measured request, and every measured request has an in-process
baseline call of about the same cost, so the count that fits is

    n = (time left - warm-up requests) / sum over cells of latency x (concurrency levels + baselines)

capped at ``--requests`` (the count asked for) and floored at ``MIN_REQUESTS``: below it
a ratio means nothing (benchmarks/stats.py marks it), so the run overruns instead and
says so. ``floor_seconds`` is the same arithmetic the other way round: what a caller (the
demo) must leave the bench, priced from latencies it estimated (``matmul_gflops``) before
any model exists.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from ofaserve.benchmarks.stats import MIN_RATIO_REQUESTS
from ofaserve.benchmarks.loadgen import Target, run_closed_loop

PROBE_REQUESTS = 2
MIN_REQUESTS = MIN_RATIO_REQUESTS  # the fewest per cell whose ratios the report quotes
CPU_SAMPLE_S = 1.0  # the machine's CPU use, sampled just before the measured rounds
REPORT_RESERVE_S = 5.0  # the report, its plot and the server's shutdown after the last request
SETUP_RESERVE_S = 5.0  # before the probe: the in-process runners' compile and the dev sentences


def probe(url: str, targets: dict[tuple[str, str], Any], timeout_s: float) -> dict[tuple[str, str], float]:
    """Mean latency (ms) of ``PROBE_REQUESTS`` requests per (model, workload) at concurrency 1
    (the first one also warms the server and is not counted)."""
    out = {}
    for key, target in targets.items():
        run_closed_loop(url, target, 1, n_requests=1, timeout_s=timeout_s)
        res = run_closed_loop(url, target, 1, n_requests=PROBE_REQUESTS, timeout_s=timeout_s)
        if res.latencies_ms:
            out[key] = sum(res.latencies_ms) / len(res.latencies_ms)
    return out


def fit_requests(left_s: float, latency_ms: dict[tuple[str, str], float], *, concurrency_levels: int, rounds: int,
                 warmup: int, baselines: dict[tuple[str, str], int], requested: int) -> tuple[int, dict[str, Any]]:
    """(measured requests per model/workload/concurrency, the arithmetic as a record).
    ``baselines``: in-process runtimes per (model, workload); each makes as many calls as
    the served cell has requests, plus one warm call per round. Never fewer than
    ``MIN_REQUESTS`` (or ``requested``, if that is fewer): ``at_floor`` then says the run
    kept that minimum past the budget."""
    per_request, fixed = request_costs(latency_ms, concurrency_levels=concurrency_levels, rounds=rounds,
                                       warmup=warmup, baselines=baselines)
    fixed += CPU_SAMPLE_S
    room = left_s - REPORT_RESERVE_S - fixed
    floor = min(MIN_REQUESTS, requested)
    fits = requested if per_request <= 0 else math.floor(max(0.0, room) / per_request)
    n = max(floor, min(requested, fits))
    record = {"left_s": round(left_s, 1), "probe_latency_ms": {f"{m}/{w}": round(v, 2) for (m, w), v in latency_ms.items()},
              "s_per_request_of_each_cell": round(per_request, 3), "warmup_and_reserve_s": round(fixed + REPORT_RESERVE_S, 1),
              "requests_asked": requested, "requests": n, "at_floor": fits < floor}
    if n < requested:
        why = (f"kept the minimum of {floor} (fewer give ratios that mean nothing; the time left allowed {fits})"
               if fits < floor else f"{per_request:.2f} s per request across the cells, {max(0.0, room):.0f} s left")
        record["cut"] = f"{n} measured requests per model/workload instead of {requested}: {why}"
    if per_request * n + fixed + REPORT_RESERVE_S > left_s:
        record["over_budget_s"] = round(per_request * n + fixed + REPORT_RESERVE_S - left_s, 1)
    return n, record


def request_costs(latency_ms: dict[tuple[str, str], float], *, concurrency_levels: int, rounds: int, warmup: int,
                  baselines: dict[tuple[str, str], int]) -> tuple[float, float]:
    """(seconds that one more measured request per cell costs across every cell and its
    in-process calls, seconds of the warm-up requests and warm calls), from the latency in
    ms of one request per (model, workload)."""
    per_request = fixed = 0.0
    for key, ms in latency_ms.items():
        s, b = ms / 1000, baselines.get(key, 0)
        per_request += s * (concurrency_levels + b)
        fixed += s * (concurrency_levels * rounds * warmup + b * rounds)
    return per_request, fixed


def floor_seconds(latency_ms: dict[tuple[str, str], float], *, requests: int, concurrency_levels: int, rounds: int,
                  warmup: int, baselines: dict[tuple[str, str], int]) -> float:
    """Seconds a budgeted run needs for ``requests`` measured requests per cell: set-up, the
    probe, warm-up, the measured requests and their in-process calls, the report."""
    per_request, fixed = request_costs(latency_ms, concurrency_levels=concurrency_levels,
                                       rounds=min(rounds, requests), warmup=warmup, baselines=baselines)
    probe_s = sum(latency_ms.values()) / 1000 * (1 + PROBE_REQUESTS)
    return SETUP_RESERVE_S + probe_s + fixed + CPU_SAMPLE_S + requests * per_request + REPORT_RESERVE_S


def matmul_gflops(seconds: float = 0.3, seed: int = 0) -> tuple[float, str]:
    """(GFLOP/s, precision) of a BERT layer's FFN matmul at batch 16 x seq 128 (2048 x 384 by
    384 x 1536), compiled by OpenVINO for this CPU with its defaults: bf16 where the CPU has
    it, else f32, the speed class `ofaserve repo --precision auto` serves from there. A BERT
    forward is almost all such matmuls, which OpenVINO runs near the CPU's peak, so their
    FLOPs over this speed price a request before any model is exported."""
    import openvino as ov
    from openvino import opset13 as ops

    rng = np.random.default_rng(seed)
    x = ops.parameter([2048, 384], np.float32)
    w = ops.constant(rng.standard_normal((384, 1536)).astype(np.float32))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(x, w, False, False)], [x]), "CPU")
    request = compiled.create_infer_request()
    data = rng.standard_normal((2048, 384)).astype(np.float32)
    request.infer([data])  # the first call sets up the threads
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while not times or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        request.infer([data])
        times.append(time.perf_counter() - t0)
    precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return 2 * 2048 * 384 * 1536 / float(np.median(times)) / 1e9, precision


class BenchClock:
    """Seconds since the benchmark started, against ``--time_budget_s``."""

    def __init__(self, budget_s: float):
        self.budget_s, self.t0 = budget_s, time.monotonic()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)


def fit_plan(plan, clock: BenchClock, url: str, models: list[str], workloads: dict, baselines: dict):
    """(``plan`` with its request counts sized to the time left, the sizing record)."""
    from dataclasses import replace

    targets = {(m, w): Target(m, wl, f"{m}_encoder" if w == "fixed" else m) for m in models
               for w, wl in workloads.items()}
    latency = probe(url, targets, plan.args.timeout)
    per_cell: dict[tuple[str, str], int] = {}
    for m, w, _runtime in baselines:
        per_cell[(m, w)] = per_cell.get((m, w), 0) + 1
    n, record = fit_requests(clock.left(), latency, concurrency_levels=len(plan.args.concurrency),
                             rounds=plan.rounds, warmup=plan.args.warmup,
                             baselines=per_cell if plan.n_base > 0 else {}, requested=plan.requests)
    record.update(time_budget_s=clock.budget_s, probe_requests_sent=len(targets) * (1 + PROBE_REQUESTS))
    return replace(plan, requests=n, rounds=min(plan.rounds, n), n_base=min(plan.n_base, n)), record
