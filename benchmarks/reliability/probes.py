"""Observation of a running server: its processes (tritonserver and the python-backend
stubs), their memory, their /dev/shm regions; bounded waits; RSS sampling during a run.

Also the constants the other modules share (ROOT, MIB, SHM_PREFIX) and the `ofaserve`
command of this venv."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent.parent  # the repository root
MIB = 1 << 20
SHM_PREFIX = "triton_python_backend_shm_region_"


# =============================================================================== processes
def ofaserve_command() -> list[str]:
    """The `ofaserve` console script of this venv (or the module behind it)."""
    exe = Path(sys.executable).parent / "ofaserve"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ofaserve.cli"]


def stubs_of(server_pid: int) -> list[dict[str, Any]]:
    """Live python-backend stubs of one tritonserver: pid, model, instance, shm region.

    A stub's argv is ``stub MODEL_PY SHM_REGION DEFAULT_SIZE GROWTH PARENT_PID BACKEND_DIR
    IPC_SIZE INSTANCE_NAME RUNTIME`` (python_backend 2.51)."""
    out = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(server_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue
                argv = child.cmdline()
                if len(argv) > 2 and argv[0].endswith("triton_python_backend_stub"):
                    out.append({"pid": child.pid, "model": Path(argv[1]).parent.parent.name,
                                "shm": argv[2], "instance": argv[8] if len(argv) > 8 else ""})
    return out


def zombies_of(server_pid: int) -> int:
    with contextlib.suppress(psutil.Error):
        return sum(1 for c in psutil.Process(server_pid).children()
                   if _status(c) == psutil.STATUS_ZOMBIE)
    return 0


def _status(p: psutil.Process) -> str:
    try:
        return p.status()
    except psutil.Error:
        return "gone"


def rss_by_process(server_pid: int) -> dict[str, float]:
    """RSS in MiB of tritonserver and of each live stub (keyed by instance name)."""
    out: dict[str, float] = {}
    with contextlib.suppress(psutil.Error):
        out["tritonserver"] = psutil.Process(server_pid).memory_info().rss / MIB
    for s in stubs_of(server_pid):
        with contextlib.suppress(psutil.Error):
            out[s["instance"] or str(s["pid"])] = psutil.Process(s["pid"]).memory_info().rss / MIB
    return out


def shm_usage(names: Iterable[str]) -> dict[str, dict[str, int]]:
    """Size and allocated bytes of /dev/shm regions (missing ones left out)."""
    out = {}
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(f"/dev/shm/{name}")
            out[name] = {"size": st.st_size, "allocated": st.st_blocks * 512}
    return out


def live_pids(pids: Iterable[int]) -> list[int]:
    alive = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if _status(psutil.Process(pid)) not in (psutil.STATUS_ZOMBIE, "gone"):
                alive.append(pid)
    return alive


def processes_mentioning(text: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        if p.info["status"] != psutil.STATUS_ZOMBIE and any(text in a for a in (p.info["cmdline"] or [])):
            found.append(p.info["pid"])
    return found


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class Sampler:
    """Samples RSS (server + stubs) and the stubs' /dev/shm regions every ``interval`` s
    in a daemon thread; at most ``max_samples`` samples are kept (then it stops)."""

    def __init__(self, server_pid: int, interval: float = 0.25, max_samples: int = 20_000,
                 progress: Callable[[], int] | None = None):
        self.pid, self.interval, self.max_samples, self.progress = server_pid, interval, max_samples, progress
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def sample(self) -> dict[str, Any]:
        rss = rss_by_process(self.pid)
        shm = shm_usage(s["shm"] for s in stubs_of(self.pid))
        s = {"t": time.monotonic() - self.t0, "rss_mib": sum(rss.values()), "rss": rss,
             "shm_bytes": sum(v["size"] for v in shm.values()),
             "shm_allocated": sum(v["allocated"] for v in shm.values()),
             "done": self.progress() if self.progress else None}
        return s

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self.samples.append(self.sample())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        self.samples.append(self.sample())


def memory_summary(samples: list[dict[str, Any]], warmup_done: int) -> dict[str, Any]:
    """Start / after warm-up / max / end RSS, the largest rise above the after-warm-up RSS,
    and the slope after warm-up (MiB per 1,000 requests, least squares on (requests done,
    RSS))."""
    rss = [s["rss_mib"] for s in samples]
    warm = [s for s in samples if (s["done"] or 0) >= warmup_done] or samples[-1:]
    x = np.array([s["done"] or 0 for s in warm], dtype=float)
    y = np.array([s["rss_mib"] for s in warm], dtype=float)
    slope = float(np.polyfit(x, y, 1)[0] * 1000) if len(warm) >= 3 and np.ptp(x) > 0 else None
    per_process_end = samples[-1]["rss"]
    per_process_start = warm[0]["rss"]
    return {
        "n_samples": len(samples), "rss_start_mib": rss[0], "rss_after_warmup_mib": warm[0]["rss_mib"],
        "rss_max_mib": max(rss), "rss_end_mib": rss[-1], "growth_after_warmup_mib": rss[-1] - warm[0]["rss_mib"],
        "max_growth_after_warmup_mib": float(y.max() - y[0]), "samples_after_warmup": len(warm),
        "after_warmup_at_request": warm[0]["done"],
        "slope_mib_per_1000_requests": slope,
        "per_process_growth_mib": {k: per_process_end.get(k, 0) - v for k, v in per_process_start.items()},
        "per_process_end_mib": per_process_end,
        "shm_bytes_start": samples[0]["shm_bytes"], "shm_bytes_end": samples[-1]["shm_bytes"],
        "shm_bytes_max": max(s["shm_bytes"] for s in samples),
        "shm_allocated_end": samples[-1]["shm_allocated"],
    }
