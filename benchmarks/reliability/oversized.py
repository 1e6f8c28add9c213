"""What oversized requests cost the served pipeline: resident memory and /dev/shm of
tritonserver and every python-backend stub before and after a flood of requests far over the
text limits (``ofaserve repo --max_text_bytes / --max_request_bytes``), on a repository with
the default limits and on a copy of it built without them (the control: what the limits save).

Where the bytes go before ofaserve's code can refuse them (Triton 2.51, read in its sources
and measured here): the gRPC server takes any message up to 2 GiB (grpc_server.cc
``SetMaxMessageSize(INT32_MAX)``, no flag), the request is copied into the tokenizer stub's
/dev/shm region (which grows to fit it and never shrinks), and the stub turns the BYTES tensor
into one Python ``bytes`` object per row when it builds the request, before ``execute()``
runs (python_backend r24.10 pb_tensor.cc calls ``deserialize_bytes_tensor``): ``as_numpy()``
hands back that copy. The limits stop the rest: no text is decoded, tokenized or encoded.
Only a cap in front of the server (serve/deploy) keeps the bytes from arriving at all.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.benchmarks.reliability.faults import free_ports
from ofaserve.benchmarks.reliability.probes import MIB, rss_by_process, shm_usage, stubs_of
from ofaserve.benchmarks.reliability.traffic import answers, text_inputs
from ofaserve.serve.server import TritonServer
from ofaserve.serve.repository import build_repository

# The control's limits: larger than any gRPC message, so nothing is refused for its size.
UNLIMITED_BYTES = 1 << 31


def memory_state(server_pid: int) -> dict[str, Any]:
    """RSS per process (MiB), their total, and the stubs' /dev/shm region sizes (MiB)."""
    rss = rss_by_process(server_pid)
    regions = {s["instance"]: shm_usage([s["shm"]]).get(s["shm"], {}).get("size", 0) / MIB
               for s in stubs_of(server_pid)}
    return {"rss_mib": rss, "rss_total_mib": sum(rss.values()), "shm_region_mib": regions,
            "shm_total_mib": sum(regions.values())}


def oversized_texts(request_mib: float, rows: int) -> list[bytes]:
    """``rows`` texts of ``request_mib`` MiB together (distinct, plain ASCII words)."""
    per_row = int(request_mib * MIB / rows)
    return [(f"{i} " + "a fine but long film " * (per_row // 21 + 1))[:per_row].encode() for i in range(rows)]


def flood(url: str, model: str, texts: list[bytes], n_requests: int, concurrency: int,
          timeout_s: float = 120.0) -> dict[str, Any]:
    """``n_requests`` copies of one request of ``texts`` from ``concurrency`` threads; how
    each ended (answered, or the server's message)."""
    import tritonclient.grpc as grpcclient

    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    tickets = iter(range(n_requests))

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        inputs = text_inputs(texts)
        try:
            while True:
                with lock:
                    if next(tickets, None) is None:
                        return
                try:
                    client.infer(model, inputs, client_timeout=timeout_s)
                    kind = "answered"
                except Exception as e:
                    kind = str(e.message() if hasattr(e, "message") else e)[:300]
                with lock:
                    outcomes[kind] = outcomes.get(kind, 0) + 1
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s * n_requests)
    return {"requests": n_requests, "concurrency": concurrency, "outcomes": outcomes,
            "wall_s": time.monotonic() - t0, "hung_threads": sum(t.is_alive() for t in threads)}


def flood_run(repo: Path, model: str, good: list[list[str]], *, n_requests: int, request_mib: float, rows: int,
              concurrency: int, settle_s: float = 3.0) -> dict[str, Any]:
    """One server on ``repo``: memory idle (after the good batches once), then after the flood
    (``settle_s`` later), and whether the good batches still get the answers they got before."""
    ports = free_ports()
    with TritonServer(repo, grpc_port=ports["grpc"], http_port=ports["http"], metrics_port=ports["metrics"]) as srv:
        pid = srv.process.pid
        before_answers = answers(srv.grpc_url, model, good)
        idle = memory_state(pid)
        result = flood(srv.grpc_url, model, oversized_texts(request_mib, rows), n_requests, concurrency)
        time.sleep(settle_s)
        after = memory_state(pid)
        after_answers = answers(srv.grpc_url, model, good)
        ready = all(srv.models_ready().values())
    diff = max(float(np.abs(a - b).max()) for a, b in zip(before_answers, after_answers))
    return {"idle": idle, "after": after, "flood": result, "models_ready_after": ready,
            "good_answers_max_abs_diff": diff,
            "rss_growth_mib": after["rss_total_mib"] - idle["rss_total_mib"],
            "rss_growth_by_process_mib": {k: after["rss_mib"].get(k, 0) - v for k, v in idle["rss_mib"].items()},
            "shm_growth_mib": after["shm_total_mib"] - idle["shm_total_mib"]}


def oversized_check(export: Path, work: Path, texts: list[str], *, n_requests: int = 40, request_mib: float = 8.0,
                    rows: int = 64, concurrency: int = 4) -> dict[str, Any]:
    """The flood on a repository of ``export`` with the default limits, then on one built
    without them (the control)."""
    good = [texts[i:i + 4] for i in range(0, 16, 4)]
    out: dict[str, Any] = {"requests": n_requests, "request_mib": request_mib, "rows": rows,
                           "concurrency": concurrency, "runs": {}}
    for label, limits in (("limited", {}),
                          ("control", {"max_text_bytes": UNLIMITED_BYTES, "max_request_bytes": UNLIMITED_BYTES})):
        repo = work / f"repo_oversized_{label}"
        manifest = build_repository([export], repo, target="cpu", precision="fp32", overwrite=True, **limits).to_dict()
        (model,) = manifest["models"]
        run = flood_run(repo, model, good, n_requests=n_requests, request_mib=request_mib, rows=rows,
                        concurrency=concurrency)
        run["text_limits"] = manifest["models"][model]["text_limits"]
        out["runs"][label] = run
        out["served_name"] = model
    limited = out["runs"]["limited"]
    out["checks"] = {
        "every_oversized_request_refused": sum(v for k, v in limited["flood"]["outcomes"].items()
                                               if "exceeds this model's limit" in k) == n_requests,
        "control_answered_them": out["runs"]["control"]["flood"]["outcomes"].get("answered") == n_requests,
        "server_up_and_answers_unchanged": all(r["models_ready_after"] and r["good_answers_max_abs_diff"] <= 1e-4
                                               for r in out["runs"].values()),
    }
    out["ok"] = all(out["checks"].values())
    return out
