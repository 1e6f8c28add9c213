"""Pure statistics for the latency benchmark: no I/O, no server, easy to unit-test.

Every function takes measured values (latencies in nanoseconds, counters from Triton's
statistics API) and derives figures from them; nothing here invents a number.
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


# --------------------------------------------------------------------------- latency
def summarize_latencies(latencies_ms: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p95/p99/mean/std/min/max of a list of latencies in ms (numpy percentiles,
    linear interpolation). An empty list gives ``n == 0`` and ``None`` everywhere else."""
    arr = np.asarray(latencies_ms, dtype=np.float64)
    keys = [f"p{p}" for p in PERCENTILES] + ["mean", "std", "min", "max"]
    if arr.size == 0:
        return {"n": 0, **{k: None for k in keys}}
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("latencies must be finite and non-negative")
    pct = np.percentile(arr, PERCENTILES)
    out: dict[str, float | int | None] = {"n": int(arr.size)}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, pct)})
    out.update(mean=float(arr.mean()), std=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
               min=float(arr.min()), max=float(arr.max()))
    return out


def throughput(n_items: int, wall_s: float) -> float | None:
    """Items (sentences) per second over a measured wall-clock window."""
    if wall_s is None or wall_s <= 0:
        return None
    return n_items / wall_s


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return float(num) / float(den)


# --------------------------------------------------------------------------- accounting
@dataclass
class Accounting:
    """Thread-safe request ledger: every request sent ends as ok or as one error kind."""
    sent: int = 0
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def on_send(self) -> None:
        with self._lock:
            self.sent += 1

    def on_ok(self) -> None:
        with self._lock:
            self.ok += 1

    def on_error(self, kind: str, message: str = "") -> None:
        with self._lock:
            self.errors[kind] += 1
            self.error_examples.setdefault(kind, message[:300])

    @property
    def n_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def balanced(self) -> bool:
        return self.sent == self.ok + self.n_errors

    def merge(self, other: "Accounting") -> "Accounting":
        out = Accounting(self.sent + other.sent, self.ok + other.ok, self.errors + other.errors,
                         {**other.error_examples, **self.error_examples})
        # Counter addition drops zero counts; that is what we want.
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "ok": self.ok, "errors": self.n_errors,
                "errors_by_kind": dict(sorted(self.errors.items())),
                "error_examples": dict(sorted(self.error_examples.items())),
                "balanced": self.balanced}


def error_kind(exc: BaseException) -> str:
    """A short stable label for an exception: the gRPC status when there is one."""
    status = None
    st = getattr(exc, "status", None)
    if callable(st):
        try:
            status = st()
        except Exception:  # pragma: no cover - defensive
            status = None
    if status:
        return str(status).replace("StatusCode.", "grpc_").lower()
    return type(exc).__name__


# --------------------------------------------------------------------------- Triton statistics
_DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def flatten_model_stats(stats_json: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """``get_inference_statistics(as_json=True)`` -> {model: {counter: int}}.

    Protobuf JSON writes 64-bit integers as strings; missing counters read as 0.
    Several versions of one model are summed.
    """
    out: dict[str, dict[str, int]] = {}
    for ms in stats_json.get("model_stats", []) or []:
        name = ms.get("name", "")
        flat = out.setdefault(name, {})
        flat["inference_count"] = flat.get("inference_count", 0) + _int(ms.get("inference_count"))
        flat["execution_count"] = flat.get("execution_count", 0) + _int(ms.get("execution_count"))
        inf = ms.get("inference_stats", {}) or {}
        for key in _DURATIONS:
            d = inf.get(key, {}) or {}
            flat[f"{key}_count"] = flat.get(f"{key}_count", 0) + _int(d.get("count"))
            flat[f"{key}_ns"] = flat.get(f"{key}_ns", 0) + _int(d.get("ns"))
    return out


def stats_delta(before: Mapping[str, Mapping[str, int]],
                after: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Counter differences ``after - before`` per model (a model new in ``after`` counts from 0)."""
    out = {}
    for model, a in after.items():
        b = before.get(model, {})
        out[model] = {k: int(v) - int(b.get(k, 0)) for k, v in a.items()}
    return out


def add_deltas(acc: dict[str, dict[str, int]], delta: Mapping[str, Mapping[str, int]]) -> dict:
    for model, d in delta.items():
        slot = acc.setdefault(model, {})
        for k, v in d.items():
            slot[k] = slot.get(k, 0) + int(v)
    return acc


def server_side_summary(delta: Mapping[str, int]) -> dict[str, Any]:
    """Per-request server-side times in ms from one model's counter deltas.

    ``queue_ms``: time a request waited in the scheduler queue; ``compute_ms``: input
    copy + model execution + output copy; ``server_ms``: end-to-end inside the server
    (Triton's ``success`` duration). ``batches`` / ``avg_batch`` show dynamic batching.
    """
    n = delta.get("success_count", 0)
    execs = delta.get("execution_count", 0)

    def per_req(key: str) -> float | None:
        return delta.get(f"{key}_ns", 0) / n / 1e6 if n else None

    compute = None
    if n:
        compute = sum(delta.get(f"{k}_ns", 0) for k in ("compute_input", "compute_infer", "compute_output")) / n / 1e6
    return {
        "requests": n,
        "failed": delta.get("fail_count", 0),
        "inferences": delta.get("inference_count", 0),
        "executions": execs,
        "avg_batch": (delta.get("inference_count", 0) / execs) if execs else None,
        "queue_ms": per_req("queue"),
        "compute_input_ms": per_req("compute_input"),
        "compute_infer_ms": per_req("compute_infer"),
        "compute_output_ms": per_req("compute_output"),
        "compute_ms": compute,
        "server_ms": per_req("success"),
    }


def pipeline_totals(summaries: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Queue and compute ms per request summed over the models a request passes through
    (the encoder alone, or an ensemble's tokenizer -> encoder -> postprocess)."""
    out: dict[str, Any] = {"models": list(names)}
    for key in ("queue_ms", "compute_ms"):
        vals = [summaries.get(n, {}).get(key) for n in names]
        out[key] = None if any(v is None for v in vals) or not vals else float(sum(vals))
    return out


# --------------------------------------------------------------------------- widths
def pick_full(widths: Mapping[str, float | None], depths: Mapping[str, float | None] | None = None) -> str | None:
    """The full-width model of a set: the largest known width, of those the deepest
    (``depths``, 1.0 where not given; ties: first name)."""
    known = [((w, (depths or {}).get(n) or 1.0), n) for n, w in widths.items() if w is not None]
    if not known:
        return None
    best = max(k for k, _ in known)
    return next(n for k, n in known if k == best)


# --------------------------------------------------------------------------- comparisons
# Every ratio reads "subject is N.NNx faster than reference": reference latency / subject
# latency, so greater than 1 always means faster, whichever pair it compares.
STAT = "p50"
MIN_RATIO_REQUESTS = 20  # fewer measured requests in either cell: the ratio is marked, never quoted
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
_BOOTSTRAP_CELLS = 2_000_000  # resampled values held at once (memory), whatever the request count


def comparison_method(stat: str = STAT) -> dict[str, Any]:
    """What every ratio in ``compare`` is, said once in the report."""
    return {"statistic": stat,
            "ratio": f"reference {stat} / subject {stat}: greater than 1 means the subject is faster",
            "interval": f"{CI_LEVEL:.0%} percentile bootstrap over requests of the same run: each cell's "
                        f"latencies resampled with replacement, {BOOTSTRAP_RESAMPLES} resamples, numpy seed "
                        f"{BOOTSTRAP_SEED}",
            "min_requests": MIN_RATIO_REQUESTS}


def _resampled_percentile(values: np.ndarray, q: float, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Percentile ``q`` of ``resamples`` bootstrap resamples of ``values``."""
    out = np.empty(resamples)
    rows = max(1, _BOOTSTRAP_CELLS // values.size)
    for i in range(0, resamples, rows):
        k = min(rows, resamples - i)
        out[i:i + k] = np.percentile(values[rng.integers(0, values.size, (k, values.size))], q, axis=1)
    return out


def bootstrap_ratio_ci(reference_ms: Sequence[float], subject_ms: Sequence[float], stat: str = STAT,
                       level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> list[float] | None:
    """Percentile-bootstrap interval of ``stat(reference) / stat(subject)``: the two cells
    were measured apart, so each is resampled on its own. None with fewer than 2
    latencies in a cell (nothing to resample)."""
    ref, sub = np.asarray(reference_ms, dtype=np.float64), np.asarray(subject_ms, dtype=np.float64)
    if ref.size < 2 or sub.size < 2:
        return None
    q = float(stat.lstrip("p"))
    rng = np.random.default_rng(seed)
    num = _resampled_percentile(ref, q, resamples, rng)
    den = _resampled_percentile(sub, q, resamples, rng)
    keep = den > 0
    if not keep.any():
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(num[keep] / den[keep], [tail, 100 - tail])
    return [float(lo), float(hi)]


def faster(subject: Mapping[str, Any], reference: Mapping[str, Any], key: str, sides: tuple[str, str],
           stat: str = STAT) -> dict[str, Any]:
    """``{key}``: how many times faster ``subject`` is than ``reference`` (``stat`` latency of
    the reference / of the subject), its interval, and each side's latency and request
    count under the names in ``sides`` (subject's, reference's): ``{side}_ms``, ``{side}_n``.
    ``few_requests``: a cell has fewer than ``MIN_RATIO_REQUESTS`` measured requests."""
    def cell(row: Mapping[str, Any]) -> tuple[float | None, list[float]]:
        return (row.get("latency_ms") or {}).get(stat), list(row.get("latencies_ms") or [])

    (s_ms, s_lat), (r_ms, r_lat) = cell(subject), cell(reference)
    n = (len(s_lat), len(r_lat))
    return {"stat": stat, f"{sides[0]}_ms": s_ms, f"{sides[1]}_ms": r_ms, key: ratio(r_ms, s_ms),
            "ci95": bootstrap_ratio_ci(r_lat, s_lat, stat) if s_ms and r_ms else None,
            f"{sides[0]}_n": n[0], f"{sides[1]}_n": n[1], "fewest_requests": min(n),
            "few_requests": min(n) < MIN_RATIO_REQUESTS}


def compare(results: Iterable[Mapping[str, Any]], baselines: Iterable[Mapping[str, Any]],
            widths: Mapping[str, float | None], stat: str = STAT,
            depths: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """The ratios the report asks for, from measured rows (each with its ``latencies_ms``).

    * ``speedup``: ``faster_than_full_x``, each compressed model against the full width,
      same workload and concurrency (and in-process, same runtime).
    * ``serving_overhead``: ``in_process_faster_x``, in-process against Triton gRPC at
      concurrency 1, same model, workload and runtime; ``added_ms`` is what serving adds.
    * ``real_vs_fixed``: ``real_faster_x``, a real-text request against a fixed-length one.
    * ``runtimes``: ``faster_than_served_x``, each extra in-process runtime/precision
      against the served one.
    """
    results = list(results)
    baselines = list(baselines)
    full = pick_full(widths, depths)
    by_key = {(r["model"], r["workload"], r["concurrency"]): r for r in results}

    speedup = []
    if full is not None:
        for r in results:
            ref = by_key.get((full, r["workload"], r["concurrency"]))
            if ref is None or r["model"] == full:
                continue
            speedup.append({"model": r["model"], "full_model": full, "width": widths.get(r["model"]),
                            "workload": r["workload"], "concurrency": r["concurrency"],
                            **faster(r, ref, "faster_than_full_x", ("model", "full"), stat)})
        # the same for in-process baselines: the compression gain without any serving
        base_by = {(b["model"], b["workload"], b["runtime"]): b for b in baselines}
        for b in baselines:
            ref = base_by.get((full, b["workload"], b["runtime"]))
            if ref is None or b["model"] == full:
                continue
            speedup.append({"model": b["model"], "full_model": full, "width": widths.get(b["model"]),
                            "workload": b["workload"], "concurrency": None, "runtime": b["runtime"],
                            "in_process": True, **faster(b, ref, "faster_than_full_x", ("model", "full"), stat)})

    overhead = []
    for b in baselines:
        if not b.get("served_runtime"):
            continue
        r = by_key.get((b["model"], b["workload"], 1))
        if r is None:
            continue
        row = {"model": b["model"], "workload": b["workload"], "runtime": b["runtime"],
               **faster(b, r, "in_process_faster_x", ("in_process", "triton"), stat)}
        t, i = row["triton_ms"], row["in_process_ms"]
        row["added_ms"] = t - i if t is not None and i is not None else None
        overhead.append(row)

    runtimes = []  # each in-process runtime/precision against the served one (e.g. bf16 vs fp32)
    served = {(b["model"], b["workload"]): b for b in baselines if b.get("served_runtime")}
    for b in baselines:
        ref = served.get((b["model"], b["workload"]))
        if ref is None or b is ref:
            continue
        runtimes.append({"model": b["model"], "workload": b["workload"], "runtime": b["runtime"],
                         "served_runtime": ref["runtime"],
                         **faster(b, ref, "faster_than_served_x", ("runtime", "served"), stat)})

    real_vs_fixed = []
    for r in results:
        if r["workload"] != "real":
            continue
        f = by_key.get((r["model"], "fixed", r["concurrency"]))
        if f is None:
            continue
        real_vs_fixed.append({"model": r["model"], "concurrency": r["concurrency"],
                              **faster(r, f, "real_faster_x", ("real", "fixed"), stat)})
    return {"method": comparison_method(stat), "speedup": speedup, "serving_overhead": overhead,
            "real_vs_fixed": real_vs_fixed, "runtimes": runtimes}


def ratio_entries(comparisons: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every ratio entry of ``compare``'s result (all sections, in order)."""
    return [e for k in ("speedup", "serving_overhead", "real_vs_fixed", "runtimes") for e in comparisons.get(k, [])]


def check_wall_consistency(latencies_ms: Sequence[float], wall_s: float, concurrency: int,
                           slack: float = 1.05) -> bool:
    """Measured latencies must fit in the measured window: sum(lat) <= concurrency * wall
    (closed loop, each worker has at most one request in flight) and max(lat) <= wall."""
    if not latencies_ms:
        return True
    total_s = float(np.sum(latencies_ms)) / 1e3
    return total_s <= concurrency * wall_s * slack and max(latencies_ms) / 1e3 <= wall_s * slack
