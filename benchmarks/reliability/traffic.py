"""Requests and load: gRPC inputs, idle-server answers, the closed-loop load run and its
checks, the /dev/shm payload sweep, the bad-input cases sent concurrently with good
traffic, and background traffic logged per request (used by the fault scenarios)."""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ofaserve.core.tasks import Split, load_rt_polarity

from ofaserve.benchmarks.reliability.probes import MIB, Sampler, memory_summary, shm_usage, stubs_of
from ofaserve.benchmarks.loadgen import Target, run_closed_loop
from ofaserve.benchmarks.stats import summarize_latencies
from ofaserve.benchmarks.workloads import real_text_workload


# =============================================================================== requests
def text_inputs(texts: list[str | bytes]):
    import tritonclient.grpc as grpcclient
    arr = np.array([[t if isinstance(t, bytes) else t.encode("utf-8")] for t in texts], dtype=object)
    inp = grpcclient.InferInput("TEXT", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return [inp]


def tensor_inputs(arrays: dict[str, np.ndarray]):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype
    out = []
    for name, arr in arrays.items():
        inp = grpcclient.InferInput(name, list(arr.shape), "BYTES" if arr.dtype == object else np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr)
        out.append(inp)
    return out


def answers(url: str, model: str, batches: list[list[str]], timeout: float = 30) -> list[np.ndarray]:
    """PROBS per batch, one request at a time (the idle-server reference)."""
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    try:
        return [client.infer(model, text_inputs(b), client_timeout=timeout).as_numpy("PROBS") for b in batches]
    finally:
        client.close()


def dev_sentences(limit: int = 512) -> list[str]:
    """Real sentences (rt-polarity dev split, bundled with the project)."""
    texts = load_rt_polarity().split("dev").texts
    return list(texts)[:limit]


# =============================================================================== load
def run_load(url: str, model: str, server_pid: int, texts: list[str], n_requests: int, concurrency: int,
             batch_size: int = 4, timeout_s: float = 30, warmup_fraction: float = 0.1,
             sample_interval: float = 0.25) -> dict[str, Any]:
    """``n_requests`` ensemble requests closed loop; ledger + latency + memory summary."""
    workload = real_text_workload(Split(list(texts), np.zeros(len(texts), np.int64)), batch_size, seed=0,
                                  source="rt-polarity dev")
    done = [0]
    lock = threading.Lock()

    def on_done():
        with lock:
            done[0] += 1

    warmup = int(n_requests * warmup_fraction)
    t0 = time.monotonic()
    with Sampler(server_pid, interval=sample_interval, progress=lambda: done[0]) as sampler:
        res = run_closed_loop(url, Target(model, workload, model), concurrency, n_requests=n_requests,
                              timeout_s=timeout_s, on_done=on_done)
    acc = res.accounting
    return {
        "model": model, "requests": n_requests, "concurrency": concurrency, "batch_size": batch_size,
        "client_timeout_s": timeout_s, "sent": acc.sent, "ok": acc.ok, "errors": acc.n_errors,
        "balanced": acc.balanced, "lost": acc.sent - acc.ok - acc.n_errors, "unsent": n_requests - acc.sent,
        "error_kinds": dict(acc.errors), "error_examples": dict(acc.error_examples),
        "wall_s": res.wall_s, "requests_per_s": acc.ok / res.wall_s if res.wall_s else None,
        "latency_ms": summarize_latencies(res.latencies_ms), "elapsed_s": time.monotonic() - t0,
        "memory": memory_summary(sampler.samples, warmup),
        "warmup_requests": warmup,
    }


LOAD_BOUNDS = {"rss_growth_after_warmup_mib": 32.0}


def load_checks(r: dict[str, Any]) -> dict[str, bool]:
    """The load run's pass/fail conditions (the test asserts the same on 400 requests)."""
    return {"every_request_answered": r["balanced"] and r["lost"] == 0 and r["unsent"] == 0,
            "zero_errors": r["errors"] == 0,
            "rss_growth_within_bound": r["memory"]["growth_after_warmup_mib"] < LOAD_BOUNDS["rss_growth_after_warmup_mib"],
            "shm_did_not_grow": r["memory"]["shm_bytes_end"] == r["memory"]["shm_bytes_start"]}


def shm_growth_sweep(url: str, model: str, server_pid: int, sizes_mb: Iterable[float] = (0.5, 1, 2, 4, 8, 16),
                     batch: int = 8) -> list[dict[str, Any]]:
    """One request of each payload size (``batch`` texts): every stub's /dev/shm region after it."""
    import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(url)
    rows = []
    try:
        for mb in sizes_mb:
            n_chars = int(mb * MIB / batch)
            texts = [(f"{i} " + "a fine but long film " * (n_chars // 21 + 1))[:n_chars] for i in range(batch)]
            error = None
            try:
                client.infer(model, text_inputs(texts), client_timeout=60)
            except Exception as e:
                error = str(e)[:200]
            regions = {s["instance"]: shm_usage([s["shm"]]).get(s["shm"], {}).get("size") for s in stubs_of(server_pid)}
            rows.append({"payload_mib": mb, "error": error, "region_mib": {k: v / MIB for k, v in regions.items() if v}})
    finally:
        client.close()
    return rows


# =============================================================================== bad input
@dataclass
class Case:
    name: str
    model: str                 # "ensemble" or "encoder" (suffix added to the served name)
    inputs: Callable[[], Any]  # -> list of InferInput
    expect: str                # "ok" or a regex the error message must match
    reference: list[str] | None = None   # ensemble: texts whose idle-server answer it must equal


def bad_input_cases(max_batch_size: int, max_seq_length: int, vocab_size: int, max_text_bytes: int) -> list[Case]:
    """The requests a client may send by mistake or malice, and what each must get
    (``max_text_bytes``: the text models' limit per text, the repository manifest's text_limits)."""
    long_text = ("good movie but a bad plot " * 400)[:10_000]
    huge = [(f"{i} " + "a fine but long film " * 5000)[:100_000] for i in range(max_batch_size)]
    at_limit = ("a fine film " * (max_text_bytes // 12 + 1))[:max_text_bytes]
    too_long = at_limit + "!"
    limit = "exceeds this model's limit"
    invalid_utf8 = b"caf\xc3\xa9 \xff\xfe not utf-8 \xc3"
    emoji_cjk = "😀🎬 电影很好 映画 ñandú"
    ids = np.array([[2, 5, 3]], np.int64)
    zeros = np.zeros_like(ids)

    def enc(i, t=None):
        return lambda: tensor_inputs({"input_ids": i, "token_type_ids": np.zeros_like(i) if t is None else t})

    def texts(*t):
        return lambda: text_inputs(list(t))

    return [
        Case("empty string", "ensemble", texts(""), "empty or whitespace"),
        Case("whitespace only", "ensemble", texts(" \t\n  "), "empty or whitespace"),
        Case("one empty among good", "ensemble", texts("fine film", ""), "empty or whitespace"),
        Case("10,000-char text", "ensemble", texts(long_text), "ok", [long_text]),
        Case("invalid UTF-8 bytes", "ensemble", texts(invalid_utf8), "ok", [invalid_utf8]),
        Case("emoji / CJK", "ensemble", texts(emoji_cjk), "ok", [emoji_cjk]),
        Case(f"text of max_text_bytes ({max_text_bytes:,})", "ensemble", texts(at_limit), "ok", [at_limit]),
        Case("text 1 byte over max_text_bytes", "ensemble", texts("fine film", too_long), limit + ".*per text"),
        Case(f"{max_batch_size} x 100,000 chars (6.4 MB)", "ensemble", texts(*huge), limit + ".*per request"),
        Case(f"batch {max_batch_size + 1} > max_batch_size", "ensemble",
             texts(*(["good"] * (max_batch_size + 1))), r"batch.size|max.batch|exceeds"),
        Case("TEXT as INT64", "ensemble", lambda: tensor_inputs({"TEXT": np.array([[1]], np.int64)}),
             r"data.?type|datatype|BYTES|TYPE_STRING"),
        Case("TEXT of shape [1, 2]", "ensemble",
             lambda: tensor_inputs({"TEXT": np.array([[b"a", b"b"]], dtype=object)}), r"shape|dims"),
        Case("input_ids INT32", "encoder", lambda: tensor_inputs({"input_ids": ids.astype(np.int32),
                                                                  "token_type_ids": zeros}),
             r"data.?type|datatype|INT64"),
        Case("input_ids rank 1", "encoder", lambda: tensor_inputs({"input_ids": ids[0], "token_type_ids": zeros[0]}),
             r"shape|dims"),
        Case("out-of-vocabulary id", "encoder", enc(np.array([[2, vocab_size + 10**6, 3]], np.int64)), "out of range"),
        Case("negative id", "encoder", enc(np.array([[2, -7, 3]], np.int64)), "out of range"),
        Case(f"{max_seq_length * 4} tokens", "encoder", enc(np.full((1, max_seq_length * 4), 5, np.int64)), "exceeds"),
        Case("shapes differ", "encoder", enc(ids, np.zeros((1, 4), np.int64)), "differ in shape"),
        Case(f"encoder batch {max_batch_size + 1}", "encoder",
             enc(np.tile(ids, (max_batch_size + 1, 1))), r"batch.size|max.batch|exceeds"),
    ]


def mixed_traffic(url: str, model: str, good_batches: list[list[str]], reference: list[np.ndarray],
                  cases: list[Case], case_reference: dict[str, np.ndarray], *, good_workers: int = 4,
                  bad_workers: int = 2, good_rounds: int = 20, bad_rounds: int = 3, timeout_s: float = 20,
                  atol: float = 1e-4) -> dict[str, Any]:
    """Good requests (each ``good_rounds`` passes over ``good_batches`` per worker) and
    every bad case (``bad_rounds`` times per worker) at the same time."""
    import tritonclient.grpc as grpcclient

    good = {"sent": 0, "ok": 0, "errors": 0, "mismatches": 0, "max_abs_diff": 0.0, "examples": []}
    bad: dict[str, dict[str, Any]] = {c.name: {"sent": 0, "as_expected": 0, "unexpected": [], "max_latency_s": 0.0}
                                      for c in cases}
    lock = threading.Lock()
    barrier = threading.Barrier(good_workers + bad_workers)

    def good_worker(w: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        barrier.wait()
        try:
            for r in range(good_rounds):
                for j in range(len(good_batches)):
                    k = (j + w * 7 + r) % len(good_batches)
                    with lock:
                        good["sent"] += 1
                    try:
                        probs = client.infer(model, text_inputs(good_batches[k]), client_timeout=timeout_s
                                             ).as_numpy("PROBS")
                    except Exception as e:
                        with lock:
                            good["errors"] += 1
                            good["examples"].append(str(e)[:200])
                        continue
                    diff = float(np.abs(probs - reference[k]).max())
                    same_label = bool(np.all(probs.argmax(1) == reference[k].argmax(1)))
                    with lock:
                        good["max_abs_diff"] = max(good["max_abs_diff"], diff)
                        if diff > atol or not same_label:
                            good["mismatches"] += 1
                        else:
                            good["ok"] += 1
        finally:
            client.close()

    def bad_worker(w: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        barrier.wait()
        try:
            for r in range(bad_rounds):
                for c in (cases if w % 2 == 0 else list(reversed(cases))):
                    target = model if c.model == "ensemble" else f"{model}_{c.model}"
                    t0 = time.monotonic()
                    outcome, problem = _case_outcome(client, target, c, case_reference.get(c.name),
                                                     timeout_s, atol)
                    with lock:
                        b = bad[c.name]
                        b["sent"] += 1
                        b["max_latency_s"] = max(b["max_latency_s"], time.monotonic() - t0)
                        if problem:
                            b["unexpected"].append(problem)
                        else:
                            b["as_expected"] += 1
                            b.setdefault("message", outcome if outcome != "ok" else "ok")
        finally:
            client.close()

    threads = [threading.Thread(target=good_worker, args=(w,), daemon=True) for w in range(good_workers)]
    threads += [threading.Thread(target=bad_worker, args=(w,), daemon=True) for w in range(bad_workers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    bound = timeout_s * (good_rounds * len(good_batches) + bad_rounds * len(cases)) + 30
    for t in threads:
        t.join(max(0.0, bound - (time.monotonic() - t0)))
    hung = sum(t.is_alive() for t in threads)
    return {"good": good, "bad": bad, "wall_s": time.monotonic() - t0, "hung_workers": hung,
            "good_expected": good_workers * good_rounds * len(good_batches),
            "bad_expected_per_case": bad_workers * bad_rounds}


def case_references(url: str, model: str, cases: list[Case]) -> dict[str, np.ndarray]:
    """Idle-server answers for the odd-but-valid cases (one request each)."""
    return {c.name: answers(url, model, [c.reference])[0] for c in cases if c.reference}


# =============================================================================== background traffic
class Traffic:
    """Background closed-loop ensemble traffic; every request is logged with its outcome."""

    def __init__(self, url: str, model: str, batches: list[list[str]], workers: int = 4, timeout_s: float = 10,
                 max_requests: int = 100_000):
        self.url, self.model, self.batches, self.workers, self.timeout_s = url, model, batches, workers, timeout_s
        self.max_requests = max_requests
        self.log: list[dict[str, Any]] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)]

    def _run(self, w: int) -> None:
        import tritonclient.grpc as grpcclient
        client = grpcclient.InferenceServerClient(self.url)
        i = w
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self.sent >= self.max_requests:
                        return
                    self.sent += 1
                t0 = time.monotonic()
                try:
                    client.infer(self.model, text_inputs(self.batches[i % len(self.batches)]),
                                 client_timeout=self.timeout_s)
                    error = None
                except Exception as e:
                    error = str(e)
                with self._lock:
                    self.log.append({"t0": t0, "t1": time.monotonic(), "error": error})
                if error is not None:
                    self._stop.wait(0.02)  # bounded retry rate against a failing server
                i += self.workers
        finally:
            client.close()

    def __enter__(self) -> "Traffic":
        for t in self._threads:
            t.start()
        return self

    def stop(self, join_timeout: float) -> int:
        """Stop sending; returns how many workers are still stuck after ``join_timeout``."""
        self._stop.set()
        deadline = time.monotonic() + join_timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self._threads)

    def __exit__(self, *exc) -> None:
        self.stop(self.timeout_s + 5)


def summarize_traffic(log: list[dict[str, Any]], t_event: float, t_end: float | None = None) -> dict[str, Any]:
    """Requests in flight at ``t_event``, and those sent after it (and before ``t_end``):
    outcomes and latency."""
    in_flight = [r for r in log if r["t0"] < t_event <= r["t1"]]
    after = [r for r in log if r["t0"] >= t_event and (t_end is None or r["t0"] < t_end)]

    def kinds(rs):
        out: dict[str, int] = {}
        for r in rs:
            k = "ok" if r["error"] is None else re.sub(r"\s+", " ", r["error"])[:160]
            out[k] = out.get(k, 0) + 1
        return out

    lat = [r["t1"] - r["t0"] for r in after]
    return {
        "before": sum(1 for r in log if r["t1"] < t_event),
        "before_errors": sum(1 for r in log if r["t1"] < t_event and r["error"]),
        "in_flight": len(in_flight), "in_flight_outcomes": kinds(in_flight),
        "in_flight_max_s_after_event": max((r["t1"] - t_event for r in in_flight), default=None),
        "after": len(after), "after_outcomes": kinds(after),
        "after_latency_s": {"max": max(lat, default=None), "median": float(np.median(lat)) if lat else None},
        "ok_after": sum(1 for r in after if r["error"] is None),
        "first_ok_after_s": min((r["t1"] - t_event for r in after if r["error"] is None), default=None),
        "max_latency_s": max((r["t1"] - r["t0"] for r in log), default=None),
        "timeouts": sum(1 for r in log if r["error"] and "deadline" in r["error"].lower()),
    }


def _case_outcome(client, target: str, case: Case, reference: np.ndarray | None, timeout_s: float,
                  atol: float) -> tuple[str | None, str | None]:
    """One bad-case request: what came back ("ok" or the server's message; None when not
    even a Triton error) and what was wrong with it (None: as the case expects)."""
    from tritonclient.utils import InferenceServerException

    try:
        result = client.infer(target, case.inputs(), client_timeout=timeout_s)
    except InferenceServerException as e:
        outcome = str(e.message() if hasattr(e, "message") else e)
        if case.expect == "ok" or not re.search(case.expect, outcome, re.I):
            return outcome, f"error: {outcome[:200]}"
        return outcome, None
    except Exception as e:  # not even a Triton error
        return None, f"{type(e).__name__}: {str(e)[:200]}"
    if case.expect != "ok":
        return "ok", "answered, expected an error"
    if reference is not None:
        d = float(np.abs(result.as_numpy("PROBS") - reference).max())
        if d > atol:
            return "ok", f"answer differs from the idle server's by {d:.2e}"
    return "ok", None
