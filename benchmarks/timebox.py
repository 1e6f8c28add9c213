"""``--time_budget_s`` for the benchmark: request counts sized from the first requests.

Before the measured rounds, each model and workload gets a few probe requests at
concurrency 1 (they also warm the server; they are not in the report's latencies). Their
mean latency prices a measured request, and every measured request has an in-process
baseline call of about the same cost, so the count that fits is

    n = (time left - warm-up requests) / sum over cells of latency x (concurrency levels + baselines)

capped at ``--requests`` (the count asked for) and floored at ``MIN_REQUESTS``.
"""
from __future__ import annotations

import math
import time
from typing import Any

PROBE_REQUESTS = 2
MIN_REQUESTS = 3  # one per ABBA round at the default 3 rounds; fewer gives no percentile worth printing
REPORT_RESERVE_S = 5.0  # the report, its plot and the server's shutdown after the last request


def probe(url: str, targets: dict[tuple[str, str], Any], timeout_s: float) -> dict[tuple[str, str], float]:
    """Mean latency (ms) of ``PROBE_REQUESTS`` requests per (model, workload) at concurrency 1
    (the first one also warms the server and is not counted)."""
    from ofaserve.benchmarks.loadgen import run_closed_loop

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
    the served cell has requests, plus one warm call per round."""
    per_request = fixed = 0.0
    for key, ms in latency_ms.items():
        s, b = ms / 1000, baselines.get(key, 0)
        per_request += s * (concurrency_levels + b)
        fixed += s * (concurrency_levels * rounds * warmup + b * rounds)
    room = left_s - REPORT_RESERVE_S - fixed
    n = requested if per_request <= 0 else max(MIN_REQUESTS, min(requested, math.floor(max(0.0, room) / per_request)))
    record = {"left_s": round(left_s, 1), "probe_latency_ms": {f"{m}/{w}": round(v, 2) for (m, w), v in latency_ms.items()},
              "s_per_request_of_each_cell": round(per_request, 3), "warmup_and_reserve_s": round(fixed + REPORT_RESERVE_S, 1),
              "requests_asked": requested, "requests": n}
    if n < requested:
        record["cut"] = (f"{n} measured requests per model/workload instead of {requested}: "
                         f"{per_request:.2f} s per request across the cells, {max(0.0, room):.0f} s left")
    if per_request * n + fixed + REPORT_RESERVE_S > left_s:
        record["over_budget_s"] = round(per_request * n + fixed + REPORT_RESERVE_S - left_s, 1)
    return n, record


class BenchClock:
    """Seconds since the benchmark started, against ``--time_budget_s``."""

    def __init__(self, budget_s: float):
        self.budget_s, self.t0 = budget_s, time.monotonic()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)


def fit_plan(plan, clock: BenchClock, url: str, models: list[str], workloads: dict, baselines: dict):
    """(``plan`` with its request counts sized to the time left, the sizing record)."""
    from dataclasses import replace

    from ofaserve.benchmarks.loadgen import Target

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
