"""Reliability of the served pipeline: load, faults, bad input, interrupted export.

Run (records benchmarks/results/reliability.json + .md)::

    .venv/bin/python benchmarks/reliability.py                       # tiny model (+ a real export if found)
    .venv/bin/python benchmarks/reliability.py --export_dir runs/demo/export/w0.6667 --requests 5000

Scenarios, each on the REAL Triton 2.51 bundled with nvidia-pytriton, on loopback only:

load        ``--requests`` ensemble requests (text, ``--batch_size`` sentences each) at
            ``--concurrency``, closed loop (benchmarks.loadgen): every request must be
            answered (sent == ok + errors) with zero errors; RSS of tritonserver + every
            python-backend stub and the size of each stub's /dev/shm region are sampled
            during the run (growth after warm-up, slope per 1,000 requests).
bad_input   odd-but-valid text, invalid requests to the ensemble and to the encoder,
            sent concurrently with good requests: the good ones must keep the answers
            an idle server gave; every bad one must get its own error, none may hang.
faults      SIGKILL the encoder's stub mid-load under `ofaserve serve`: how the
            in-flight and later requests end, whether Triton 2.51 restarts the stub,
            what Triton's own readiness says, when `ofaserve serve` exits and why, and
            what is left behind. SIGKILL tritonserver under `ofaserve serve`. A second
            `ofaserve serve` on a busy port. SIGKILL of `ofaserve serve` itself.
export      SIGINT / SIGTERM to `ofaserve export` mid-run on a tiny compress output:
            a previous export must stay intact (manifest sha256), no temp folder left.
shm         /dev/shm bytes per python-backend instance (sizes of the deploy manifest).

The helpers are imported by tests/test_reliability.py (reduced counts, hard bounds).
Every loop here is bounded in count and in time; every server started here is stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `python benchmarks/reliability.py`
    sys.path.insert(0, str(ROOT))

from compress.artifacts import machine_info, now_iso, read_manifest, write_json  # noqa: E402

MIB = 1 << 20
SHM_PREFIX = "triton_python_backend_shm_region_"
REAL_EXPORT_CANDIDATES = ("runs/demo/export/w0.6667", "runs/demo/export/w67", "runs/full/export/w0.6667",
                          "runs/quick/export/w0.6667")


# =============================================================================== processes
def ofaserve_command() -> list[str]:
    """The `ofaserve` console script of this venv (or the module behind it)."""
    exe = Path(sys.executable).parent / "ofaserve"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ofaserve_cli"]


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
    """Start / after warm-up / max / end RSS and the slope after warm-up (MiB per 1,000
    requests, least squares on (requests done, RSS))."""
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
        "slope_mib_per_1000_requests": slope,
        "per_process_growth_mib": {k: per_process_end.get(k, 0) - v for k, v in per_process_start.items()},
        "per_process_end_mib": per_process_end,
        "shm_bytes_start": samples[0]["shm_bytes"], "shm_bytes_end": samples[-1]["shm_bytes"],
        "shm_bytes_max": max(s["shm_bytes"] for s in samples),
        "shm_allocated_end": samples[-1]["shm_allocated"],
    }


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
    from compress.tasks import load_rt_polarity
    texts, _ = load_rt_polarity().split("dev")
    return list(texts)[:limit]


# =============================================================================== load
def run_load(url: str, model: str, server_pid: int, texts: list[str], n_requests: int, concurrency: int,
             batch_size: int = 4, timeout_s: float = 30, warmup_fraction: float = 0.1,
             sample_interval: float = 0.25) -> dict[str, Any]:
    """``n_requests`` ensemble requests closed loop; ledger + latency + memory summary."""
    from benchmarks.loadgen import Target, run_closed_loop
    from benchmarks.stats import summarize_latencies
    from benchmarks.workloads import real_text_workload

    workload = real_text_workload(texts, batch_size, seed=0, source="rt-polarity dev")
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


def bad_input_cases(max_batch_size: int, max_seq_length: int, vocab_size: int) -> list[Case]:
    """The requests a client may send by mistake or malice, and what each must get."""
    long_text = ("good movie but a bad plot " * 400)[:10_000]
    huge = [(f"{i} " + "a fine but long film " * 5000)[:100_000] for i in range(max_batch_size)]
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
        Case(f"{max_batch_size} x 100,000 chars (6.4 MB)", "ensemble", texts(*huge), "ok", huge),
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
    from tritonclient.utils import InferenceServerException

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
                    outcome, problem = None, None
                    try:
                        result = client.infer(target, c.inputs(), client_timeout=timeout_s)
                        outcome = "ok"
                        if c.expect != "ok":
                            problem = "answered, expected an error"
                        elif c.name in case_reference:
                            d = float(np.abs(result.as_numpy("PROBS") - case_reference[c.name]).max())
                            if d > atol:
                                problem = f"answer differs from the idle server's by {d:.2e}"
                    except InferenceServerException as e:
                        outcome = str(e.message() if hasattr(e, "message") else e)
                        if c.expect == "ok" or not re.search(c.expect, outcome, re.I):
                            problem = f"error: {outcome[:200]}"
                    except Exception as e:  # not even a Triton error
                        problem = f"{type(e).__name__}: {str(e)[:200]}"
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


# =============================================================================== ofaserve serve
class ServeCLI:
    """`ofaserve serve` as a subprocess, its output collected by reader threads."""

    def __init__(self, repo: Path, ports: dict[str, int], poll: float = 0.5, timeout: float = 180,
                 extra: list[str] | None = None):
        self.repo, self.ports, self.poll, self.timeout = Path(repo), ports, poll, timeout
        self.cmd = ofaserve_command() + [
            "serve", "--model_repository", str(self.repo), "--grpc_port", str(ports["grpc"]),
            "--http_port", str(ports["http"]), "--metrics_port", str(ports["metrics"]), "--poll", str(poll),
            "--timeout", str(timeout)] + (extra or [])
        self.proc: subprocess.Popen | None = None
        self.out: list[str] = []
        self.err: list[str] = []
        self._lines: "queue.Queue[str]" = queue.Queue()
        self.server_pid: int | None = None
        self.workdir: str | None = None
        self.stubs: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def _read(self, stream, sink: list[str], forward: bool) -> None:
        for line in iter(stream.readline, ""):
            sink.append(line)
            if forward:
                self._lines.put(line)
        stream.close()

    def start(self, wait_ready: bool = True, ready_timeout: float = 180) -> "ServeCLI":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, cwd=ROOT)
        for stream, sink, fwd in ((self.proc.stdout, self.out, True), (self.proc.stderr, self.err, False)):
            threading.Thread(target=self._read, args=(stream, sink, fwd), daemon=True).start()
        if not wait_ready:
            return self
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith("server log:"):
                self.workdir = str(Path(line.split(":", 1)[1].strip()).parent)
                break
        if self.workdir is None:
            self.kill()
            raise RuntimeError(f"`ofaserve serve` never became ready (exit {self.proc.returncode}): "
                               + "".join(self.out[-5:] + self.err[-5:]))
        (server,) = [c for c in psutil.Process(self.proc.pid).children() if "tritonserver" in c.name()
                     or c.cmdline()[0].endswith("tritonserver")]
        self.server_pid = server.pid
        self.stubs = stubs_of(server.pid)
        return self

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    @property
    def stderr(self) -> str:
        time.sleep(0.05)  # let the reader thread drain
        return "".join(self.err)

    def leftovers(self) -> dict[str, Any]:
        """What this server left behind: live stubs / server, shm regions, its work dir."""
        pids = [s["pid"] for s in self.stubs] + ([self.server_pid] if self.server_pid else [])
        return {"live_processes": live_pids(pids),
                "processes_in_workdir": processes_mentioning(self.workdir) if self.workdir else [],
                "shm_regions": sorted(shm_usage(s["shm"] for s in self.stubs)),
                "workdir_exists": bool(self.workdir and os.path.exists(self.workdir))}

    def kill(self) -> None:
        """Last resort: stop the CLI, then anything it left (only processes/segments it made)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if self.wait(30) is None:
                self.proc.kill()
                self.wait(10)
        if self.server_pid:
            for pid in live_pids([self.server_pid] + [s["pid"] for s in self.stubs]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for s in self.stubs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{s['shm']}")
        if self.workdir and os.path.isdir(self.workdir) and Path(self.workdir).name.startswith("ofaserve-triton-"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def free_ports() -> dict[str, int]:
    from serve.server import free_port
    return {"grpc": free_port(), "http": free_port(), "metrics": free_port()}


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


def _watch_after_kill(url: str, server_pid: int, model: str, stub: dict[str, Any], t_kill: float, observe_s: float,
                      done: Callable[[], bool] = lambda: False, readiness: Callable[[], dict] | None = None
                      ) -> list[dict[str, Any]]:
    """Every 0.25 s for ``observe_s`` (or until ``done()``): stub count and Triton's own readiness."""
    import tritonclient.grpc as grpcclient
    triton = grpcclient.InferenceServerClient(url)
    timeline = []
    try:
        while time.monotonic() < t_kill + observe_s:
            pids = [s["pid"] for s in stubs_of(server_pid) if s["model"] == stub["model"]]
            row: dict[str, Any] = {"t": round(time.monotonic() - t_kill, 2), "stubs": len(pids),
                                   "new_stub": any(p != stub["pid"] for p in pids), "zombies": zombies_of(server_pid)}
            with contextlib.suppress(Exception):
                row["triton_server_ready"] = triton.is_server_ready(client_timeout=2)
                row["triton_encoder_ready"] = triton.is_model_ready(stub["model"], client_timeout=2)
                row["triton_ensemble_ready"] = triton.is_model_ready(model, client_timeout=2)
            if readiness is not None:
                with contextlib.suppress(Exception):
                    r = readiness()
                    row["ofaserve_encoder_ready"], row["ofaserve_ensemble_ready"] = r[stub["model"]], r[model]
            timeline.append(row)
            if done():
                break
            time.sleep(0.25)
    finally:
        triton.close()
    return timeline


def _thin(rows: list[dict[str, Any]], n: int = 12) -> list[dict[str, Any]]:
    """At most ~n rows, always keeping the first, the last and every change of state."""
    keep, last = [], None
    for i, r in enumerate(rows):
        state = {k: v for k, v in r.items() if k != "t"}
        if i == 0 or i == len(rows) - 1 or state != last:
            keep.append(r)
        last = state
    return keep[:n] + (keep[-1:] if len(keep) > n else [])


def stub_kill_triton(repo: Path, model: str, batches: list[list[str]], *, workers: int = 4, timeout_s: float = 10,
                     warm_s: float = 1.5, observe_s: float = 20) -> dict[str, Any]:
    """What Triton 2.51 itself does when the encoder stub dies under load (no watchdog):
    does it restart the stub, what do its health endpoints say, how do requests end."""
    from serve.server import TritonServer
    p = free_ports()
    with TritonServer(repo, grpc_port=p["grpc"], http_port=p["http"], metrics_port=p["metrics"]) as srv:
        (enc,) = [s for s in stubs_of(srv.process.pid) if s["model"] == f"{model}_encoder"][:1]
        with Traffic(srv.grpc_url, model, batches, workers, timeout_s) as traffic:
            time.sleep(warm_s)
            t_kill = time.monotonic()
            os.kill(enc["pid"], signal.SIGKILL)
            timeline = _watch_after_kill(srv.grpc_url, srv.process.pid, model, enc, t_kill, observe_s,
                                         readiness=srv.models_ready)
            stuck = traffic.stop(timeout_s + 5)
        t_stop = time.monotonic()
        code = srv.stop()
        stop_s = time.monotonic() - t_stop
    return {"client_timeout_s": timeout_s, "workers": workers, "observed_s": observe_s,
            "killed": enc["instance"], "traffic": summarize_traffic(traffic.log, t_kill),
            "sent": traffic.sent, "answered": len(traffic.log), "stuck_workers": stuck,
            "stub_restarted": any(r["new_stub"] for r in timeline), "timeline": _thin(timeline),
            "stop_exit_code": code, "stop_s": stop_s}


def stub_kill_under_load(repo: Path, model: str, batches: list[list[str]], *, workers: int = 4,
                         timeout_s: float = 10, warm_s: float = 1.5, observe_s: float = 15,
                         poll: float = 0.5) -> dict[str, Any]:
    """SIGKILL the encoder stub of ``model`` while `ofaserve serve` is under load."""
    cli = ServeCLI(repo, free_ports(), poll=poll)
    report: dict[str, Any] = {"client_timeout_s": timeout_s, "workers": workers, "cli_poll_s": poll}
    try:
        cli.start()
        (enc,) = [s for s in cli.stubs if s["model"] == f"{model}_encoder"][:1]
        with Traffic(cli.url, model, batches, workers, timeout_s) as traffic:
            time.sleep(warm_s)
            t_kill = time.monotonic()
            os.kill(enc["pid"], signal.SIGKILL)
            timeline = _watch_after_kill(cli.url, cli.server_pid, model, enc, t_kill, observe_s,
                                         done=lambda: cli.proc.poll() is not None)
            t_exit = time.monotonic() if cli.proc.poll() is not None else None
            stuck = traffic.stop(timeout_s + 5)
        code = cli.wait(30)
        report.update({
            "killed": {"pid": enc["pid"], "instance": enc["instance"]},
            "traffic_until_cli_exit": summarize_traffic(traffic.log, t_kill, t_exit),
            "sent": traffic.sent, "answered": len(traffic.log), "stuck_workers": stuck,
            "stub_restarted": any(r["new_stub"] for r in timeline), "timeline": _thin(timeline),
            "cli_exit_code": code, "cli_exit_after_s": None if t_exit is None else t_exit - t_kill,
            "cli_stderr": cli.stderr.strip()[-600:],
        })
        wait_until(lambda: not cli.leftovers()["live_processes"], 10)
        report["leftovers"] = cli.leftovers()
        return report
    finally:
        cli.kill()


def kill_server(cli: ServeCLI, sig: int = signal.SIGKILL, exit_timeout: float = 60) -> dict[str, Any]:
    """Send ``sig`` to the tritonserver under a started `ofaserve serve`: exit code,
    reason, what is left (processes, /dev/shm regions, work dir)."""
    t0 = time.monotonic()
    os.kill(cli.server_pid, sig)
    code = cli.wait(exit_timeout)
    took = time.monotonic() - t0
    wait_until(lambda: not cli.leftovers()["live_processes"], 10)
    return {"signal": signal.Signals(sig).name, "cli_exit_code": code, "cli_exit_after_s": took,
            "cli_poll_s": cli.poll, "cli_stderr": cli.stderr.strip()[-600:], "stubs_before": len(cli.stubs),
            "leftovers": cli.leftovers()}


def server_kill_under_cli(repo: Path, poll: float = 0.5, sig: int = signal.SIGKILL) -> dict[str, Any]:
    cli = ServeCLI(repo, free_ports(), poll=poll)
    try:
        return kill_server(cli.start(), sig)
    finally:
        cli.kill()


def busy_port_attempts(repo: Path, running: ServeCLI) -> dict[str, Any]:
    """A second `ofaserve serve` reusing each of a running server's ports in turn."""
    out = {}
    for proto in ("grpc", "http", "metrics"):
        ports = free_ports()
        ports[proto] = running.ports[proto]
        second = ServeCLI(repo, ports, timeout=60)
        t0 = time.monotonic()
        try:
            second.start(wait_ready=False)
            code = second.wait(90)
            out[proto] = {"exit_code": code, "after_s": time.monotonic() - t0,
                          "stderr": second.stderr.strip()[-300:]}
        finally:
            second.kill()
    return out


def port_race(repo: Path) -> dict[str, Any]:
    """A port taken AFTER the launcher's check (a race): what Triton 2.51 itself does.

    Bypasses serve.server.port_in_use for the measurement only."""
    import serve.server as server_mod
    from compress.artifacts import OfaserveError
    out = {}
    original = server_mod.port_in_use
    server_mod.port_in_use = lambda host, port: False
    try:
        for proto in ("grpc", "http", "metrics"):
            import socket
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                sock.listen()
                ports = free_ports()
                ports[proto] = sock.getsockname()[1]
                srv = server_mod.TritonServer(repo, grpc_port=ports["grpc"], http_port=ports["http"],
                                              metrics_port=ports["metrics"])
                t0 = time.monotonic()
                try:
                    srv.start(timeout=90)
                    alive_1s = wait_until(lambda: not srv.is_running(), 3) is False
                    out[proto] = {"start_returned": True, "after_s": time.monotonic() - t0,
                                  "still_running_3s_later": alive_1s,
                                  "exit_code": None if srv.is_running() else srv.process.returncode}
                except OfaserveError as e:
                    out[proto] = {"start_returned": False, "after_s": time.monotonic() - t0, "error": str(e)[:300]}
                finally:
                    srv.stop()
    finally:
        server_mod.port_in_use = original
    return out


def cli_killed(repo: Path, wait_s: float = 5) -> dict[str, Any]:
    """SIGKILL `ofaserve serve` itself: does its Triton outlive it?"""
    cli = ServeCLI(repo, free_ports())
    try:
        cli.start()
        cli.proc.kill()
        cli.wait(10)
        time.sleep(wait_s)
        left = cli.leftovers()
        return {"server_alive_5s_after": cli.server_pid in left["live_processes"],
                "stubs_alive_5s_after": len([p for p in left["live_processes"] if p != cli.server_pid]),
                "shm_regions_left": len(left["shm_regions"]), "ports_still_bound": _port_bound(cli.ports["grpc"])}
    finally:
        cli.kill()


def _port_bound(port: int) -> bool:
    from serve.server import port_in_use
    return port_in_use("127.0.0.1", port)


# =============================================================================== export
def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temp_entries(out: Path) -> list[str]:
    """Entries next to ``out`` that the atomic writer makes (.NAME.tmp-*, .probe-*, .old-*)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


EXPORT_PHASES = ("Start to get pruned model", "sub model + static model written", "ONNX written",
                 "pre-processing before quantization")


def interrupt_export(compress_dir: Path, out: Path, width: float, *, sig: int = signal.SIGINT,
                     delay_s: float = 1.0, after_line: str | None = None, timeout_s: float = 300,
                     extra: list[str] | None = None) -> dict[str, Any]:
    """Start `ofaserve export` into ``out`` (a previous good export) and send ``sig``
    ``delay_s`` after its temp folder appears (or after it logs a line containing
    ``after_line``); report exit, manifest sha, leftovers and the outcome."""
    before = sha256(out / "manifest.json")
    siblings = set(os.listdir(out.parent))
    cmd = ofaserve_command() + ["export", "--model_name_or_path", str(compress_dir), "--output_dir", str(out),
                                "--width_mult", str(width), "--no_progress"] + (extra or [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL)
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def read():
        for line in iter(proc.stdout.readline, ""):
            lines.append((time.monotonic() - t0, line.rstrip()))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        appeared = wait_until(lambda: any(n.startswith(f".{out.name}.tmp-") for n in os.listdir(out.parent))
                              or proc.poll() is not None, timeout_s, 0.02)
        t_tmp = time.monotonic() - t0
        if after_line:
            appeared = wait_until(lambda: any(after_line in l for _, l in lines) or proc.poll() is not None,
                                  timeout_s, 0.02)
        if proc.poll() is not None or not appeared:
            raise RuntimeError(f"export never reached the signal point (exit {proc.poll()}): "
                               + " | ".join(l for _, l in lines[-3:]))
        time.sleep(delay_s)
        during = temp_entries(out)
        finished_before_signal = proc.poll() is not None
        t_sig = time.monotonic() - t0
        proc.send_signal(sig)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            lines.append((time.monotonic() - t0, "[killed: did not exit within 120 s of the signal]"))
        reader.join(10)
        unchanged = sha256(out / "manifest.json") == before if (out / "manifest.json").is_file() else False
        loads = _export_ok(out)
        after = [l for t, l in lines if t >= t_sig]
        done_before = any(l.startswith("exported width") for t, l in lines if t < t_sig)
        done_after = any(l.startswith("exported width") for l in after)
        if done_before:
            outcome = f"export had completed; signal during interpreter exit (exit {proc.returncode})"
        elif proc.returncode in (130, 128 + int(sig), -int(sig)) and unchanged and loads and not done_after:
            outcome = "interrupted, previous export intact"
        elif done_after and loads and not unchanged:
            outcome = ("signal lost: the export completed and replaced the previous one" if proc.returncode == 0
                       else "signal acted only after the export had completed")
        elif unchanged and loads:
            last = next((l for l in reversed(after) if l.strip()), "")
            outcome = f"failed with exit {proc.returncode} ({last[:80]}), previous export intact"
        else:
            outcome = "BROKEN: output missing or incomplete"
        return {"signal": signal.Signals(sig).name, "after_line": after_line, "delay_s": delay_s,
                "temp_appeared_after_s": round(t_tmp, 2), "signal_after_s": round(t_sig, 2),
                "finished_before_signal": finished_before_signal, "exit_code": proc.returncode, "outcome": outcome,
                "last_line_before_signal": next((l for t, l in reversed(lines) if t < t_sig and l.strip()), "")[:160],
                "swallowed_in_callback": any("Exception ignored in" in l for l in after),
                "stderr_tail": [l for l in after if l.strip()][-1:],
                "temp_during": during, "temp_after": temp_entries(out),
                "new_siblings": sorted(set(os.listdir(out.parent)) - siblings),
                "manifest_unchanged": unchanged, "export_still_loads": loads}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _export_ok(out: Path) -> bool:
    try:
        m = read_manifest(out, "export")
        return all((out / rel).is_file() for k, rel in m["artifacts"].items()
                   if k in ("onnx", "tokenizer") and rel)
    except Exception:
        return False


def run_export(compress_dir: Path, out: Path, width: float, extra: list[str] | None = None,
               timeout_s: float = 600) -> dict[str, Any]:
    cmd = ofaserve_command() + ["export", "--model_name_or_path", str(compress_dir), "--output_dir", str(out),
                                "--width_mult", str(width), "--no_progress"] + (extra or [])
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s, stdin=subprocess.DEVNULL)
    return {"exit_code": r.returncode, "wall_s": time.monotonic() - t0,
            "stderr_tail": r.stderr.strip().splitlines()[-3:], "temp_after": temp_entries(out)}


# =============================================================================== models
def tiny_export(compress_dir: Path, folder: Path) -> Path:
    """The real `export_subnet` at width 0.75 of the tiny compress output (as tests/conftest.py)."""
    from export import export_subnet
    out = folder / "tiny_export_w075"
    export_subnet(str(compress_dir), str(out), 0.75, progress=False)
    return out


def tiny_compress(folder: Path) -> Path:
    """The real `compress_model` on the tiny checkpoint (as tests/conftest.py does)."""
    from compress.pipeline import CompressOptions, compress_model
    from compress.testing import tiny_task_files, write_tiny_hf_checkpoint
    train, dev, texts = tiny_task_files(folder / "data")
    ckpt = write_tiny_hf_checkpoint(folder / "hf", texts)
    out = folder / "compress"
    compress_model(CompressOptions(
        output_dir=str(out), model_name_or_path=str(ckpt), train_file=str(train), dev_file=str(dev),
        width_mult_list=[1.0, 0.75, 0.5], max_seq_length=32, batch_size=16, num_teacher_epochs=1,
        num_train_epochs=1, importance_samples=32, learning_rate=1e-3, teacher_learning_rate=1e-3,
        progress=False, logging_steps=0))
    return out


def find_real_export() -> Path | None:
    for rel in REAL_EXPORT_CANDIDATES:
        p = ROOT / rel
        if (p / "manifest.json").is_file():
            return p
    return None


def describe_export(export: Path, kind: str) -> dict[str, Any]:
    m = read_manifest(export, "export")
    return {"kind": kind, "path": str(export), "width_mult": m.get("width_mult"), "model_type": m.get("model_type"),
            "max_seq_length": m.get("max_seq_length"), "vocab_size": m.get("vocab_size"),
            "params": (m.get("params") or {}).get("total"), "source": m.get("source") or m.get("compress_dir")}


# =============================================================================== scenarios
def scenario_load_and_bad_input(export: Path, kind: str, work: Path, args) -> dict[str, Any]:
    from serve.repository import build_repository
    from serve.server import TritonServer
    tag = kind.split()[0]  # short name for paths and log lines; ``kind`` describes the model
    repo = work / f"repo_{tag}"
    manifest = build_repository([export], repo, target="cpu")
    (model,) = manifest["models"]
    info = manifest["models"][model]
    texts = dev_sentences()
    out: dict[str, Any] = {"model": describe_export(export, kind), "served_name": model,
                           "repository": {k: manifest[k] for k in ("target", "runtime", "precision",
                                                                   "max_batch_size", "encoder_instances",
                                                                   "encoder_threads")}}
    p = free_ports()
    with TritonServer(repo, grpc_port=p["grpc"], http_port=p["http"], metrics_port=p["metrics"]) as srv:
        shm_idle = shm_usage(s["shm"] for s in stubs_of(srv.process.pid))
        out["shm_idle"] = {s["instance"]: shm_idle.get(s["shm"]) for s in stubs_of(srv.process.pid)}
        print(f"[{tag}] load: {args.requests} requests x {args.batch_size} sentences, concurrency {args.concurrency}",
              flush=True)
        out["load"] = run_load(srv.grpc_url, model, srv.process.pid, texts, args.requests, args.concurrency,
                               batch_size=args.batch_size)
        out["load"]["bounds"] = LOAD_BOUNDS
        out["load"]["checks"] = load_checks(out["load"])
        print(f"[{tag}]   {json.dumps({k: out['load'][k] for k in ('sent', 'ok', 'errors', 'wall_s')})} "
              f"memory {out['load']['memory']['rss_after_warmup_mib']:.0f} -> {out['load']['memory']['rss_end_mib']:.0f} MiB",
              flush=True)
        shm_loaded = shm_usage(s["shm"] for s in stubs_of(srv.process.pid))
        out["shm_after_load"] = {s["instance"]: shm_loaded.get(s["shm"]) for s in stubs_of(srv.process.pid)}

        print(f"[{tag}] /dev/shm growth with payload size", flush=True)
        out["shm_growth"] = shm_growth_sweep(srv.grpc_url, model, srv.process.pid)
        good_batches = [texts[i:i + 4] for i in range(0, 64, 4)]
        reference = answers(srv.grpc_url, model, good_batches)
        cases = bad_input_cases(manifest["max_batch_size"], info["max_seq_length"],
                                read_manifest(export, "export")["vocab_size"])
        case_ref = case_references(srv.grpc_url, model, cases)
        print(f"[{tag}] bad input concurrent with good traffic", flush=True)
        mixed = mixed_traffic(srv.grpc_url, model, good_batches, reference, cases, case_ref,
                              good_rounds=args.good_rounds, bad_rounds=args.bad_rounds)
        mixed["models_ready_after"] = all(srv.models_ready().values())
        out["bad_input"] = mixed
        shm_end = shm_usage(s["shm"] for s in stubs_of(srv.process.pid))
        out["shm_after_bad_input"] = {s["instance"]: shm_end.get(s["shm"]) for s in stubs_of(srv.process.pid)}
        out["rss_end_mib"] = rss_by_process(srv.process.pid)
    return out


def scenario_faults(export: Path, work: Path) -> dict[str, Any]:
    from serve.repository import build_repository
    repo = work / "repo_faults"
    manifest = build_repository([export], repo, target="cpu")
    (model,) = manifest["models"]
    texts = dev_sentences(64)
    batches = [texts[i:i + 4] for i in range(0, 64, 4)]
    out: dict[str, Any] = {}
    print("[faults] SIGKILL encoder stub under load: Triton alone", flush=True)
    out["encoder_stub_killed_triton"] = stub_kill_triton(repo, model, batches, observe_s=20)
    print("[faults] SIGKILL encoder stub under load: `ofaserve serve`", flush=True)
    out["encoder_stub_killed_under_load"] = stub_kill_under_load(repo, model, batches, observe_s=20, poll=2.0)
    print("[faults] SIGKILL tritonserver under `ofaserve serve`", flush=True)
    out["tritonserver_killed"] = server_kill_under_cli(repo, poll=2.0)
    print("[faults] second `ofaserve serve` on busy ports", flush=True)
    first = ServeCLI(repo, free_ports())
    try:
        first.start()
        out["busy_port"] = busy_port_attempts(repo, first)
    finally:
        first.kill()
    print("[faults] port taken after the launcher's check (race)", flush=True)
    out["port_race"] = port_race(repo)
    print("[faults] SIGKILL `ofaserve serve` itself", flush=True)
    out["cli_sigkilled"] = cli_killed(repo)
    return out


def scenario_export(compress_dir: Path, work: Path) -> dict[str, Any]:
    out_dir = work / "exports" / "w075"
    first = run_export(compress_dir, out_dir, 0.75)
    result: dict[str, Any] = {"compress_dir": str(compress_dir), "first_export": first, "interrupts": []}
    points = [(signal.SIGINT, phase, delay) for phase in EXPORT_PHASES for delay in (0.05, 0.3, 0.6)]
    points += [(signal.SIGTERM, EXPORT_PHASES[1], 0.05), (signal.SIGTERM, EXPORT_PHASES[2], 0.3)]
    for sig, phase, delay in points:
        print(f"[export] {signal.Signals(sig).name} {delay} s after '{phase}'", flush=True)
        result["interrupts"].append(interrupt_export(compress_dir, out_dir, 0.75, sig=sig, delay_s=delay,
                                                     after_line=phase))
    result["next_run"] = run_export(compress_dir, out_dir, 0.75)
    result["next_run"]["export_loads"] = _export_ok(out_dir)
    return result


def scenario_shm_fresh(export: Path, work: Path, sizes_mb: Iterable[float] = (1, 4, 16)) -> list[dict[str, Any]]:
    """Per payload size, on a FRESH server: the regions after one request of that size."""
    from serve.repository import build_repository
    from serve.server import TritonServer
    repo = work / "repo_shm"
    (model,) = build_repository([export], repo, target="cpu")["models"]
    rows = []
    for mb in sizes_mb:
        p = free_ports()
        with TritonServer(repo, grpc_port=p["grpc"], http_port=p["http"], metrics_port=p["metrics"]) as srv:
            rows += shm_growth_sweep(srv.grpc_url, model, srv.process.pid, [mb])
    return rows


def shm_per_instance(results: dict[str, Any]) -> dict[str, Any]:
    sizes = []
    for r in results.get("models", []):
        for key in ("shm_idle", "shm_after_load", "shm_after_bad_input"):
            sizes += [v["size"] for v in r.get(key, {}).values() if v]
    return {"per_instance_max_bytes": max(sizes, default=None), "per_instance_min_bytes": min(sizes, default=None),
            "note": "python backend 2.51 defaults: shm-default-byte-size 1 MiB, shm-growth-byte-size 1 MiB; a region "
                    "grows by the growth size when a request/response does not fit"}


# =============================================================================== report
def to_markdown(r: dict[str, Any]) -> str:
    lines = [f"# Reliability report ({r['created']})", "",
             f"Machine: {r['machine']['cpu']}, {r['machine']['cores']} cores; Triton {r.get('triton', '2.51.0')} "
             f"(nvidia-pytriton wheel), python backend, loopback gRPC.", "",
             f"Command: `{r['command']}`", ""]
    for m in r.get("models", []):
        L, mem, bad = m["load"], m["load"]["memory"], m["bad_input"]
        lines += [f"## Model: {m['model']['kind']} ({m['served_name']}, {m['model']['path']})", "",
                  f"Repository: {m['repository']}", "",
                  "### Load", "",
                  f"- {L['requests']} ensemble requests x {L['batch_size']} sentences, concurrency {L['concurrency']}, "
                  f"client timeout {L['client_timeout_s']} s: sent {L['sent']}, ok {L['ok']}, errors {L['errors']}, "
                  f"lost {L['lost']} (balanced: {L['balanced']}); {L['wall_s']:.1f} s, {L['requests_per_s']:.0f} req/s",
                  f"- latency ms: p50 {L['latency_ms']['p50']:.2f}, p99 {L['latency_ms']['p99']:.2f}, "
                  f"max {L['latency_ms']['max']:.2f}",
                  f"- RSS (tritonserver + stubs, {mem['n_samples']} samples): start {mem['rss_start_mib']:.1f} MiB, "
                  f"after warm-up ({L['warmup_requests']} req) {mem['rss_after_warmup_mib']:.1f}, max "
                  f"{mem['rss_max_mib']:.1f}, end {mem['rss_end_mib']:.1f}; growth after warm-up "
                  f"{mem['growth_after_warmup_mib']:+.1f} MiB; slope {_fmt(mem['slope_mib_per_1000_requests'])} "
                  f"MiB / 1,000 requests",
                  f"- per process at the end (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in mem['per_process_end_mib'].items()),
                  f"- /dev/shm of the stubs: {mem['shm_bytes_start'] / MIB:.1f} MiB at start, max "
                  f"{mem['shm_bytes_max'] / MIB:.1f}, end {mem['shm_bytes_end'] / MIB:.1f}",
                  f"- checks (RSS growth bound {L['bounds']['rss_growth_after_warmup_mib']:.0f} MiB): "
                  + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in L["checks"].items()), "",
                  "### /dev/shm region size (MiB) after one request of N MiB of text (8 sentences)", "",
                  "| payload MiB | " + " | ".join(m["shm_growth"][0]["region_mib"]) + " | error |",
                  "|---|" + "---|" * (len(m["shm_growth"][0]["region_mib"]) + 1)]
        cols = list(m["shm_growth"][0]["region_mib"])
        lines += [f"| {g['payload_mib']} | " + " | ".join(_fmt(g["region_mib"].get(c), 0) for c in cols)
                  + f" | {g['error'] or ''} |" for g in m["shm_growth"]]
        lines += ["",
                  "### Bad input concurrent with good traffic", "",
                  f"- good: {bad['good']['sent']} requests, ok {bad['good']['ok']}, errors {bad['good']['errors']}, "
                  f"wrong answers {bad['good']['mismatches']} (max |dp| vs idle server {bad['good']['max_abs_diff']:.2e}); "
                  f"hung workers {bad['hung_workers']}; models ready after: {bad['models_ready_after']}", "",
                  "| case | sent | as expected | max latency s | server answer |", "|---|---|---|---|---|"]
        for name, b in bad["bad"].items():
            msg = (b.get("message") or "; ".join(b["unexpected"][:1]) or "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {name} | {b['sent']} | {b['as_expected']} | {b['max_latency_s']:.2f} | {msg[:110]} |")
        lines.append("")
    f = r.get("faults")
    if f:
        lines += ["## Faults", ""]
        k = f.get("encoder_stub_killed_triton")
        if k:
            t = k["traffic"]
            lines += [f"### Encoder stub SIGKILLed under load, Triton alone ({k['workers']} client threads, client "
                      f"timeout {k['client_timeout_s']} s, watched {k['observed_s']} s)", "",
                      f"- in flight at the kill: {t['in_flight']}, outcomes {t['in_flight_outcomes']}, all ended "
                      f"within {_fmt(t['in_flight_max_s_after_event'])} s",
                      f"- sent after the kill: {t['after']}, outcomes {t['after_outcomes']}; latency median "
                      f"{_fmt(t['after_latency_s']['median'])} s, max {_fmt(t['after_latency_s']['max'])} s; "
                      f"client timeouts {t['timeouts']}",
                      f"- sent {k['sent']}, answered {k['answered']}, stuck client threads {k['stuck_workers']}",
                      f"- Triton restarted the stub: {k['stub_restarted']}; timeline (s after kill): "
                      f"`{json.dumps(k['timeline'])}`",
                      f"- stop(): exit code {k['stop_exit_code']} after {k['stop_s']:.1f} s", ""]
        k = f["encoder_stub_killed_under_load"]
        t = k["traffic_until_cli_exit"]
        lines += [f"### Encoder stub SIGKILLed under load, `ofaserve serve --poll {k['cli_poll_s']}` "
                  f"({k['workers']} client threads, client timeout {k['client_timeout_s']} s)", "",
                  f"- in flight at the kill: {t['in_flight']}, outcomes {t['in_flight_outcomes']}, all ended within "
                  f"{_fmt(t['in_flight_max_s_after_event'])} s",
                  f"- sent between the kill and the CLI's exit: {t['after']}, outcomes {t['after_outcomes']}; "
                  f"latency max {_fmt(t['after_latency_s']['max'])} s; client timeouts {t['timeouts']}",
                  f"- sent {k['sent']}, answered {k['answered']}, stuck client threads {k['stuck_workers']}",
                  f"- `ofaserve serve` exit code {k['cli_exit_code']} {_fmt(k['cli_exit_after_s'])} s after the kill: "
                  f"`{k['cli_stderr'][:300]}`",
                  f"- left behind: {k['leftovers']}", ""]
        s = f["tritonserver_killed"]
        lines += ["### tritonserver SIGKILLed under `ofaserve serve`", "",
                  f"- exit code {s['cli_exit_code']} after {s['cli_exit_after_s']:.1f} s: `{s['cli_stderr'][:300]}`",
                  f"- left behind: {s['leftovers']}", "", "### Second `ofaserve serve` on a busy port", ""]
        for proto, b in f["busy_port"].items():
            lines.append(f"- {proto}: exit {b['exit_code']} after {b['after_s']:.1f} s: `{b['stderr'][:200]}`")
        lines += ["", "### Port taken after the launcher's check (race; Triton's own behaviour)", ""]
        for proto, b in f["port_race"].items():
            lines.append(f"- {proto}: {json.dumps(b)[:400]}")
        c = f["cli_sigkilled"]
        lines += ["", "### `ofaserve serve` itself SIGKILLed", "", f"- {json.dumps(c)}", ""]
    e = r.get("export")
    if e:
        lines += ["## Interrupted `ofaserve export` (tiny compress output, previous good export in place)", "",
                  f"- first export: exit {e['first_export']['exit_code']} in {e['first_export']['wall_s']:.1f} s", "",
                  "| signal | sent after | exit | outcome | previous manifest unchanged | temp left | KeyboardInterrupt "
                  "swallowed in a callback |", "|---|---|---|---|---|---|---|"]
        for i in e["interrupts"]:
            lines.append(f"| {i['signal']} | {i['delay_s']} s after '{i['after_line']}' | {i['exit_code']} | "
                         f"{i['outcome']} | {i['manifest_unchanged']} | {i['temp_after']} | "
                         f"{i['swallowed_in_callback']} |")
        n = e["next_run"]
        lines += ["", f"- next run: exit {n['exit_code']} in {n['wall_s']:.1f} s, loads: {n['export_loads']}, "
                      f"temp entries left: {n['temp_after']}", ""]
    if r.get("shm"):
        sh = r["shm"]
        lines += ["## /dev/shm per python-backend instance", ""]
        if sh.get("per_instance_max_bytes"):
            lines += [f"- region sizes seen in the runs above: {sh['per_instance_min_bytes'] / MIB:.0f} to "
                      f"{sh['per_instance_max_bytes'] / MIB:.0f} MiB per instance ({sh['note']})"]
        for g in sh.get("fresh_server", []):
            lines.append(f"- fresh server, one request of {g['payload_mib']} MiB of text (8 sentences): regions "
                         + ", ".join(f"{k} {v:.0f} MiB" for k, v in g["region_mib"].items())
                         + (f"; error {g['error']}" if g["error"] else ""))
        lines.append("")
    return "\n".join(lines) + "\n"


def _fmt(v: Any, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--export_dir", type=Path, default=None,
                   help="a real export to test besides the tiny one [default: the first of "
                        + ", ".join(REAL_EXPORT_CANDIDATES) + " that exists]")
    p.add_argument("--no_tiny", action="store_true", help="skip the tiny model")
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=4, help="sentences per load request")
    p.add_argument("--good_rounds", type=int, default=10)
    p.add_argument("--bad_rounds", type=int, default=3)
    p.add_argument("--scenarios", default="load,shm,faults,export",
                   help="comma-separated: load (includes bad input), shm, faults, export")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    scenarios = set(args.scenarios.split(","))
    report: dict[str, Any] = {"created": now_iso(), "machine": machine_info(),
                              "command": " ".join(["python benchmarks/reliability.py"] + list(argv or sys.argv[1:])),
                              "load_avg_start": os.getloadavg(), "models": []}
    with tempfile.TemporaryDirectory(prefix="ofaserve-reliability-") as tmp:
        work = Path(tmp)
        exports: list[tuple[Path, str]] = []
        compress_dir = None
        if not args.no_tiny or "export" in scenarios:
            print("[tiny] real compress + export of a 2-layer random BERT (tests/conftest.py recipe)", flush=True)
            compress_dir = tiny_compress(work / "tiny")
        if not args.no_tiny:
            exports.append((tiny_export(compress_dir, work), "tiny (random 2-layer BERT, real compress + export)"))
        real = args.export_dir or find_real_export()
        if real is not None:
            exports.append((Path(real), "real"))
        else:
            report["real_model_note"] = "no real export found (" + ", ".join(REAL_EXPORT_CANDIDATES) + "): tiny only"
        if "load" in scenarios:
            for export, kind in exports:
                report["models"].append(scenario_load_and_bad_input(export, kind, work, args))
            report["shm"] = shm_per_instance(report)
        if "shm" in scenarios and exports:
            print("[shm] one request per payload size, each on a fresh server", flush=True)
            report.setdefault("shm", {})["fresh_server"] = scenario_shm_fresh(exports[0][0], work)
        if "faults" in scenarios and exports:
            report["faults"] = scenario_faults(exports[0][0], work)
        if "export" in scenarios:
            report["export"] = scenario_export(compress_dir, work)
    report["load_avg_end"] = os.getloadavg()
    write_json(args.output, report)
    args.output.with_suffix(".md").write_text(to_markdown(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
