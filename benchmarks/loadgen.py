"""Closed-loop load generator on ``tritonclient.grpc`` (sync client, one per thread).

``concurrency`` workers each keep exactly one request in flight and send the next as
soon as the previous answer arrives. Every request is entered in an ``Accounting``
ledger when sent and leaves it as ok or as one error kind, so sent == ok + errors.
Latency is measured around the blocking ``infer`` call with ``perf_counter_ns``.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ofaserve.benchmarks.stats import Accounting, error_kind
from ofaserve.benchmarks.workloads import Workload, text_tensors


@dataclass
class Target:
    """One model under one workload: what to call and how to check the answer."""
    model: str                     # export name, e.g. bert_w67
    workload: Workload
    infer_model: str               # Triton model actually called (encoder or ensemble)

    @property
    def input_names(self) -> list[str]:
        if self.workload.name == "fixed":
            return ["input_ids", "token_type_ids"]
        return ["TEXT", "TEXT_PAIR"] if self.workload.info.get("pairs") else ["TEXT"]

    @property
    def output_names(self) -> list[str]:
        return ["logits"] if self.workload.name == "fixed" else list(self.workload.info.get("outputs",
                                                                                          ["LABEL", "PROBS"]))

    def build_inputs(self, grpcclient, i: int) -> list[Any]:
        b = self.workload.batch(i)
        if self.workload.name == "fixed":
            ids, tt = b
            inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT64"),
                      grpcclient.InferInput("token_type_ids", list(tt.shape), "INT64")]
            inputs[0].set_data_from_numpy(ids)
            inputs[1].set_data_from_numpy(tt)
            return inputs
        inputs = []
        for name, arr in text_tensors(b).items():
            inp = grpcclient.InferInput(name, list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        return inputs

    def check(self, result: Any) -> str | None:
        """None when the answer has the expected outputs and shapes, else an error kind."""
        n = self.workload.batch_size
        for name in self.output_names:
            arr = result.as_numpy(name)
            if arr is None:
                return f"missing_output_{name}"
            if arr.shape[0] != n:
                return f"bad_shape_{name}"
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                return f"non_finite_{name}"
        return None


@dataclass
class ChunkResult:
    latencies_ms: list[float] = field(default_factory=list)
    accounting: Accounting = field(default_factory=Accounting)
    wall_s: float = 0.0
    sentences_ok: int = 0


def run_closed_loop(url: str, target: Target, concurrency: int, *, n_requests: int | None = None,
                    duration_s: float | None = None, timeout_s: float | None = 60.0,
                    start_index: int = 0, on_done: Callable[[], None] | None = None) -> ChunkResult:
    """Run ``n_requests`` (or for ``duration_s``) with ``concurrency`` workers."""
    import tritonclient.grpc as grpcclient

    if (n_requests is None) == (duration_s is None):
        raise ValueError("give exactly one of n_requests and duration_s")
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    res = ChunkResult()
    acc = res.accounting
    lat_lock = threading.Lock()
    ticket = [0]
    ticket_lock = threading.Lock()
    n_distinct = len(target.workload.batches)
    # Connect and serialise inputs before the clock starts.
    clients = [grpcclient.InferenceServerClient(url) for _ in range(concurrency)]
    prepared = [[target.build_inputs(grpcclient, j) for j in range(n_distinct)] for _ in range(concurrency)]
    outputs = [[grpcclient.InferRequestedOutput(o) for o in target.output_names] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def next_ticket() -> int | None:
        with ticket_lock:
            if n_requests is not None and ticket[0] >= n_requests:
                return None
            if duration_s is not None and time.perf_counter() >= deadline[0]:
                return None
            t = ticket[0]
            ticket[0] += 1
            return t

    def worker(w: int) -> None:
        client = clients[w]
        local: list[float] = []
        barrier.wait()
        while (t := next_ticket()) is not None:
            j = (start_index + t) % n_distinct
            acc.on_send()
            t0 = time.perf_counter_ns()
            try:
                result = client.infer(target.infer_model, prepared[w][j], outputs=outputs[w],
                                      client_timeout=timeout_s)
                t1 = time.perf_counter_ns()
            except Exception as e:  # every failure is accounted for by kind
                acc.on_error(error_kind(e), str(e))
            else:
                bad = target.check(result)
                if bad:
                    acc.on_error(bad, f"{target.infer_model}: {bad}")
                else:
                    acc.on_ok()
                    local.append((t1 - t0) / 1e6)
            if on_done is not None:
                on_done()
        with lat_lock:
            res.latencies_ms.extend(local)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(concurrency)]
    for th in threads:
        th.start()
    deadline[0] = time.perf_counter() + (duration_s or 0.0)
    t_start = time.perf_counter()
    barrier.wait()
    for th in threads:
        th.join()
    res.wall_s = time.perf_counter() - t_start
    for c in clients:
        try:
            c.close()
        except Exception:  # pragma: no cover - best effort
            pass
    res.sentences_ok = acc.ok * target.workload.batch_size
    return res


def split_counts(total: int, parts: int) -> list[int]:
    """``total`` items over ``parts`` chunks as evenly as possible (earlier chunks first)."""
    base, rem = divmod(total, parts)
    return [base + (1 if i < rem else 0) for i in range(parts)]


def round_order(models: list[str], r: int) -> list[str]:
    """ABBA: forward on even rounds, reversed on odd rounds."""
    return list(models) if r % 2 == 0 else list(reversed(models))
