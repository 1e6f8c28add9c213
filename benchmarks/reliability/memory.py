"""Memory growth under sustained load, checked against a limit, with a control that must
exceed it (the shape of Triton's qa/L0_memory_growth: bounded-growth runs against
``MAX_ALLOWED_ALLOC``, then a model built to grow without bound that must fail the
same check, or the check itself is broken).

Check: ``requests`` ensemble requests closed loop on the real server; the resident
memory of tritonserver plus every python-backend stub is sampled throughout. The first
half is warm-up (allocator pools, runtime caches, the first batch of each shape); the
growth is the highest total in the second half minus the total at the middle (L0's
``--start-from-middle``). It passes below ``GROWTH_LIMIT_MIB``.

Control: a copy of the same repository whose encoder ``model.py`` gets a few lines
appended that keep ``leak_bytes`` per request it executes (the product's files are not
touched), under the same load on its own server. Its leak adds ``CONTROL_FACTOR`` times
the limit over the measured half, so the control fails only if the check cannot see a
stub's memory or does not measure growth: then the whole check fails.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from ofaserve.core.errors import OfaserveError

from ofaserve.benchmarks.reliability.faults import free_ports
from ofaserve.benchmarks.reliability.probes import MIB
from ofaserve.benchmarks.reliability.traffic import LOAD_BOUNDS, run_load
from ofaserve.serve.server import TritonServer

GROWTH_LIMIT_MIB = LOAD_BOUNDS["rss_growth_after_warmup_mib"]
WARMUP_FRACTION = 0.5
CONTROL_FACTOR = 2.0

# Appended to the control copy's encoder model.py: each executed request keeps this many
# bytes for the life of the stub (written, so the pages are resident).
LEAK_CODE = '''

# --- memory-growth control (ofaserve.benchmarks.reliability.memory): never freed
_KEPT_FOR_THE_CONTROL = []
_execute_without_leak = TritonPythonModel.execute


def _execute_keeping_memory(self, requests):
    _KEPT_FOR_THE_CONTROL.append(b"\\x01" * ({leak_bytes} * len(requests)))
    return _execute_without_leak(self, requests)


TritonPythonModel.execute = _execute_keeping_memory
'''


def leaking_copy(repo: Path, dest: Path, model: str, leak_bytes: int) -> Path:
    """``repo`` copied to ``dest`` with a leak of ``leak_bytes`` per request in the encoder of
    ``model``."""
    target = dest / f"{model}_encoder" / "1" / "model.py"
    if not (repo / target.relative_to(dest)).is_file():
        raise OfaserveError(f"{repo}: {model}_encoder has no model.py (a native backend): the control needs a "
                            "python-backend encoder")
    shutil.copytree(repo, dest)
    with open(target, "a") as f:
        f.write(LEAK_CODE.format(leak_bytes=int(leak_bytes)))
    return dest


def growth_run(repo: Path, model: str, texts: list[str], n_requests: int, concurrency: int,
               batch_size: int) -> dict[str, Any]:
    """One server on ``repo`` under ``n_requests`` closed-loop requests: the load's ledger and
    the growth after the warm-up half."""
    ports = free_ports()
    with TritonServer(repo, grpc_port=ports["grpc"], http_port=ports["http"], metrics_port=ports["metrics"]) as srv:
        load = run_load(srv.grpc_url, model, srv.process.pid, texts, n_requests, concurrency, batch_size=batch_size,
                        warmup_fraction=WARMUP_FRACTION, sample_interval=0.05)
    mem = load["memory"]
    return {"sent": load["sent"], "ok": load["ok"], "errors": load["errors"], "error_examples": load["error_examples"],
            "wall_s": load["wall_s"], "warmup_requests": load["warmup_requests"], "n_samples": mem["n_samples"],
            "samples_after_warmup": mem["samples_after_warmup"], "after_warmup_at_request": mem["after_warmup_at_request"],
            "rss_after_warmup_mib": mem["rss_after_warmup_mib"],
            "rss_max_mib": mem["rss_max_mib"], "growth_mib": mem["max_growth_after_warmup_mib"],
            "slope_mib_per_1000_requests": mem["slope_mib_per_1000_requests"],
            "per_process_growth_mib": mem["per_process_growth_mib"]}


def memory_growth_check(repo: Path, model: str, texts: list[str], work: Path, *, n_requests: int,
                        concurrency: int = 8, batch_size: int = 4,
                        limit_mib: float = GROWTH_LIMIT_MIB) -> dict[str, Any]:
    """The check on ``repo`` and its control on a leaking copy; ``ok`` when the first stays
    within ``limit_mib`` with every request answered and the control exceeds it."""
    measured = n_requests - int(n_requests * WARMUP_FRACTION)
    if measured < 10:
        raise OfaserveError(f"memory growth: {n_requests} requests leave {measured} after the warm-up half; "
                            "run at least 20")
    leak_bytes = math.ceil(CONTROL_FACTOR * limit_mib * MIB / measured)
    normal = growth_run(repo, model, texts, n_requests, concurrency, batch_size)
    normal["within_limit"] = normal["growth_mib"] < limit_mib
    control = growth_run(leaking_copy(repo, work / f"{repo.name}_leaking", model, leak_bytes), model, texts,
                         n_requests, concurrency, batch_size)
    control["leak_bytes_per_request"] = leak_bytes
    control["leak_added_after_warmup_mib"] = leak_bytes * (n_requests - control["after_warmup_at_request"]) / MIB
    control["exceeded_limit"] = control["growth_mib"] > limit_mib
    answered = all(r["errors"] == 0 and r["ok"] == n_requests for r in (normal, control))
    return {"limit_mib": limit_mib, "requests": n_requests, "concurrency": concurrency, "batch_size": batch_size,
            "warmup_fraction": WARMUP_FRACTION, "measured_requests": measured,
            "smallest_leak_over_limit_bytes_per_request": math.ceil(limit_mib * MIB / measured),
            "normal": normal, "control": control, "every_request_answered": answered,
            "ok": answered and normal["within_limit"] and control["exceeded_limit"]}
