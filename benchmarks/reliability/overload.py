"""Overload: open-loop traffic above the served model's capacity against its bounded queues
(the shape of Triton's qa/L0_model_queue, on the real pipeline instead of an identity model).

A closed-loop client waits for each answer before it sends again, so it can never offer more
than the server serves: overload needs an open loop. ``open_loop`` sends on a schedule fixed
in advance (Poisson arrivals at ``rate_per_s``, seeded) whatever the answers do, through
``tritonclient.grpc``'s ``async_infer``, and logs when each request was due, sent and ended,
and how: answered, refused by a full queue ("Exceeds maximum queue size"), refused after
waiting its queue timeout ("Request timeout expired"), or anything else.

The scenario (``overload_run``): the single-request time alone, the capacity (closed loop,
enough clients to keep every batch full), then ``factor`` x that capacity open loop for
``duration_s``. With the queue policy ``ofaserve repo`` writes, the excess is refused at once
and what is accepted waits behind at most the queue and the batches already handed to the
instances: ``accepted_latency_bound_s`` derives that wait from the settings and the two
measurements (the check allows ``BOUND_SLACK`` times it, plus Triton's batcher idle waits).
Without a bound the queue grows for as long as the overload lasts, and so does the latency
of every request. The client must keep to its schedule for the run to measure the server
(``client_kept_up``): on a small CPU shared with the server, send fewer, larger requests.
"""
from __future__ import annotations

import math
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.benchmarks.stats import summarize_latencies
from ofaserve.benchmarks.loadgen import Target, run_closed_loop
from ofaserve.benchmarks.workloads import real_text_workload
from ofaserve.core.tasks import Split
from ofaserve.benchmarks.reliability.traffic import text_inputs

REFUSALS = {"queue_full": re.compile("Exceeds maximum queue size"),
            "queue_timeout": re.compile("Request timeout expired")}
# Batches Triton's dynamic batcher may hold outside the queue per instance: the one running
# and two prefetched (core rate_limiter.cc PayloadSlotAvailable: 2 x instances payloads).
BATCHES_OUTSIDE_QUEUE_PER_INSTANCE = 3
# The check's allowance over the derived bound: the client shares the CPU with the server
# and a batch of requests that arrived together runs slower than one request alone.
BOUND_SLACK = 2.0
# Triton's dynamic batcher sleeps this long when no wake-up reaches it (dynamic_batch_scheduler.cc
# default_wait_microseconds). Under a queue policy a batch can wait it out when every instance
# finished before the batcher looked (serve/repository.py QUEUED_MODEL_INSTANCES; the tokenizer
# and the encoder of an ensemble each can): the check allows that many such waits, and the
# record counts the accepted requests that took longer than the queue alone explains.
BATCHER_IDLE_WAIT_S = 0.5
BATCHER_IDLE_WAITS_ALLOWED = 2
# Share of the scheduled rate the client must have sent for the run to count as open loop.
CLIENT_RATE_SHARE = 0.9


def outcome_kind(message: str | None) -> str:
    if message is None:
        return "ok"
    return next((kind for kind, pattern in REFUSALS.items() if pattern.search(message)), "error")


def poisson_schedule(rate_per_s: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Send times (s from the start) of a Poisson process at ``rate_per_s`` over ``duration_s``."""
    rng = np.random.default_rng(seed)
    n = max(1, int(rate_per_s * duration_s * 1.5) + 10)
    times = np.cumsum(rng.exponential(1.0 / rate_per_s, size=n))
    return times[times < duration_s]


def open_loop(url: str, model: str, requests: list[list[Any]], rate_per_s: float, duration_s: float, *,
              seed: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
    """Send ``requests`` (prepared InferInput lists, used in turn) at ``rate_per_s`` for
    ``duration_s`` whatever the answers do; wait at most ``timeout_s`` after the last send for
    the answers. Returns the per-request log and the counts."""
    import tritonclient.grpc as grpcclient

    schedule = poisson_schedule(rate_per_s, duration_s, seed)
    log: list[dict[str, Any]] = [{} for _ in schedule]
    done = threading.Semaphore(0)
    client = grpcclient.InferenceServerClient(url)

    def finished(i: int):
        def callback(result, error):
            log[i]["end_s"] = time.perf_counter() - t0
            log[i]["message"] = None if error is None else str(error.message() if hasattr(error, "message") else error)
            done.release()
        return callback

    try:
        t0 = time.perf_counter()
        for i, due in enumerate(schedule):
            wait = due - (time.perf_counter() - t0)
            if wait > 0:
                time.sleep(wait)
            log[i]["due_s"] = float(due)
            log[i]["sent_s"] = time.perf_counter() - t0
            client.async_infer(model, requests[i % len(requests)], finished(i), client_timeout=timeout_s)
        sending_s = time.perf_counter() - t0
        deadline = time.monotonic() + timeout_s + 5
        answered = sum(done.acquire(timeout=max(0.0, deadline - time.monotonic())) for _ in schedule)
    finally:
        client.close()
    for entry in log:
        entry["kind"] = outcome_kind(entry["message"]) if "end_s" in entry else "unanswered"
        if "end_s" in entry:
            entry["latency_ms"] = (entry["end_s"] - entry["sent_s"]) * 1000
    lag = [(e["sent_s"] - e["due_s"]) * 1000 for e in log]
    counts = {kind: sum(e["kind"] == kind for e in log) for kind in ("ok", *REFUSALS, "error", "unanswered")}
    return {"rate_per_s": rate_per_s, "duration_s": duration_s, "seed": seed, "sent": len(log),
            "answered": answered, "sending_s": sending_s, "offered_per_s": len(log) / sending_s if sending_s else None,
            "send_lag_ms": summarize_latencies(lag), "counts": counts,
            "error_examples": sorted({e["message"][:200] for e in log if e["kind"] == "error"})[:5],
            "log": log}


def single_request_s(url: str, model: str, inputs: list[Any], n: int = 10, timeout_s: float = 60.0) -> float:
    """Median seconds of one request alone on an idle server (after one warm-up request)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        client.infer(model, inputs, client_timeout=timeout_s)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            client.infer(model, inputs, client_timeout=timeout_s)
            times.append(time.perf_counter() - t)
    finally:
        client.close()
    return float(np.median(times))


def capacity_per_s(url: str, model: str, texts: list[str], batch_size: int, concurrency: int,
                   duration_s: float, timeout_s: float = 60.0) -> dict[str, Any]:
    """Requests per second the model answers closed loop at ``concurrency`` for ``duration_s``."""
    workload = real_text_workload(Split(list(texts), np.zeros(len(texts), np.int64)), batch_size, seed=1,
                                  source="capacity")
    res = run_closed_loop(url, Target(model, workload, model), concurrency, duration_s=duration_s, timeout_s=timeout_s)
    acc = res.accounting
    return {"concurrency": concurrency, "duration_s": duration_s, "ok": acc.ok, "errors": acc.n_errors,
            "error_examples": dict(acc.error_examples), "wall_s": res.wall_s,
            "per_s": acc.ok / res.wall_s if res.wall_s else None}


def accepted_latency_bound_s(max_queue_size: int, instances: int, max_batch_size: int, rows_per_request: int,
                             capacity: float, single_s: float) -> float:
    """The longest an accepted request should take: every request ahead of it (a full queue,
    and the batches the batcher holds outside it: ``BATCHES_OUTSIDE_QUEUE_PER_INSTANCE`` per
    instance, each of up to max_batch_size rows) served at the measured capacity, then its own
    time alone."""
    per_batch = math.ceil(max_batch_size / rows_per_request)
    ahead = max_queue_size + BATCHES_OUTSIDE_QUEUE_PER_INSTANCE * instances * per_batch
    return ahead / capacity + single_s


def overload_checks(r: dict[str, Any]) -> dict[str, bool]:
    """Pass/fail of one overload run (the test asserts the same)."""
    counts, refused, accepted = r["open_loop"]["counts"], r["refused_latency_ms"], r["accepted_latency_ms"]
    return {
        "overloaded": r["open_loop"]["offered_per_s"] >= 2 * r["capacity"]["per_s"],
        # the run measures the server only while the client keeps to its schedule
        "client_kept_up": r["open_loop"]["offered_per_s"] >= CLIENT_RATE_SHARE * r["open_loop"]["rate_per_s"],
        "every_request_ended": counts["unanswered"] == 0 and counts["error"] == 0,
        "excess_refused": counts["queue_full"] + counts["queue_timeout"] > 0 and counts["ok"] > 0,
        # a refused request does not wait in the queue that refused it: the typical one is answered
        # before the typical accepted one (which waited there) and within the derived queue bound
        "refusals_fast": (refused["n"] > 0 and accepted["n"] > 0 and r["accepted_bound_ms"] is not None
                          and refused["p50"] <= min(accepted["p50"], r["accepted_bound_ms"])),
        # no queue limit and no timeout: nothing bounds it
        "accepted_p99_bounded": (accepted["n"] > 0 and r["accepted_check_ms"] is not None
                                 and accepted["p99"] <= r["accepted_check_ms"]),
    }


def overload_run(url: str, model: str, texts: list[str], *, batch_size: int, max_batch_size: int,
                 max_queue_size: int, instances: int, queue_timeout_ms: float = 0.0, factor: float = 3.0,
                 duration_s: float = 20.0, capacity_s: float = 2.0, seed: int = 0,
                 rate_per_s: float | None = None) -> dict[str, Any]:
    """Single-request time, capacity, then ``factor`` x capacity (or ``rate_per_s``) open loop
    for ``duration_s`` on ``model`` (a text model: TEXT in), whose queues are ``max_queue_size``
    long (0: unbounded) and time out after ``queue_timeout_ms`` (0: never). Returns the record,
    with ``checks``."""
    rows = [texts[i:i + batch_size] for i in range(0, len(texts) - batch_size + 1, batch_size)]
    requests = [text_inputs(b) for b in rows]
    single = single_request_s(url, model, requests[0])
    # enough clients that a batch is always forming while one runs, never more than the queue takes
    concurrency = 2 * instances * math.ceil(max_batch_size / batch_size)
    concurrency = max(2, min(max_queue_size, concurrency) if max_queue_size else concurrency)
    cap = capacity_per_s(url, model, texts, batch_size, concurrency, capacity_s)
    if not cap["per_s"] or cap["errors"]:
        return {"error": f"capacity run failed: {cap}", "capacity": cap}
    loop = open_loop(url, model, requests, rate_per_s or factor * cap["per_s"], duration_s, seed=seed)
    log = loop.pop("log")
    accepted = summarize_latencies([e["latency_ms"] for e in log if e["kind"] == "ok"])
    refused = summarize_latencies([e["latency_ms"] for e in log if e["kind"] in REFUSALS])
    # max_queue_size 0 is Triton's unbounded queue: then only a timeout bounds the wait
    bound = (accepted_latency_bound_s(max_queue_size, instances, max_batch_size, batch_size, cap["per_s"], single)
             if max_queue_size else math.inf)
    if queue_timeout_ms:
        bound = min(bound, queue_timeout_ms / 1000 + accepted_latency_bound_s(0, instances, max_batch_size,
                                                                               batch_size, cap["per_s"], single))
    check_ms = (BOUND_SLACK * bound + BATCHER_IDLE_WAITS_ALLOWED * BATCHER_IDLE_WAIT_S) * 1000
    bound_ms = None if math.isinf(bound) else bound * 1000
    r = {"model": model, "batch_size": batch_size, "factor": factor,
         "queue": {"max_queue_size": max_queue_size, "queue_timeout_ms": queue_timeout_ms, "instances": instances,
                   "max_batch_size": max_batch_size},
         "single_request_ms": single * 1000, "capacity": cap, "open_loop": loop,
         "accepted_latency_ms": accepted, "refused_latency_ms": refused, "accepted_bound_ms": bound_ms,
         "bound_slack": BOUND_SLACK, "batcher_idle_wait_ms": BATCHER_IDLE_WAIT_S * 1000,
         "batcher_idle_waits_allowed": BATCHER_IDLE_WAITS_ALLOWED,
         "accepted_check_ms": None if bound_ms is None else check_ms,
         "accepted_over_slack_bound": sum(e["kind"] == "ok" and e["latency_ms"] > BOUND_SLACK * bound * 1000
                                          for e in log),
         "latency_over_time": _latency_over_time(log, duration_s)}
    r["checks"] = overload_checks(r)
    r["ok"] = all(r["checks"].values())
    return r


def _latency_over_time(log: list[dict[str, Any]], duration_s: float, windows: int = 5) -> list[dict[str, Any]]:
    """Per fifth of the run: accepted p99 and the share refused. An unbounded queue shows as
    a p99 that grows window after window; a bounded one stays flat."""
    out = []
    for w in range(windows):
        lo, hi = duration_s * w / windows, duration_s * (w + 1) / windows
        part = [e for e in log if lo <= e["due_s"] < hi and "latency_ms" in e]
        ok = [e["latency_ms"] for e in part if e["kind"] == "ok"]
        out.append({"from_s": lo, "to_s": hi, "sent": len(part),
                    "refused_share": (sum(e["kind"] in REFUSALS for e in part) / len(part)) if part else None,
                    "accepted_p99_ms": float(np.percentile(ok, 99)) if ok else None})
    return out


def lone_instance_copy(repo: Path, dest: Path) -> Path:
    """``repo`` copied to ``dest`` with every model under a queue policy cut to one instance:
    what the queue policy does without the second instance ``ofaserve repo`` gives it (the
    batcher's missed wake-up, serve/repository.py QUEUED_MODEL_INSTANCES). The product's
    files are not touched."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    shutil.copytree(repo, dest)
    for path in dest.glob("*/config.pbtxt"):
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        if config.dynamic_batching.HasField("default_queue_policy"):
            for group in config.instance_group:
                group.count = 1
            path.write_text(text_format.MessageToString(config))
    return dest
