"""Reliability of the served pipeline: load, faults, bad input, interrupted export.

Run (records benchmarks/results/reliability.json + .md)::

    .venv/bin/python -m ofaserve.benchmarks.reliability                       # tiny model (+ a real export if found)
    .venv/bin/python -m ofaserve.benchmarks.reliability --export_dir runs/demo/export/w0.6667 --requests 5000

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
memory      ``--memory_requests`` requests on a fresh server: the RSS of tritonserver + stubs
            may grow at most the limit over the second half; then the same on a copy of the
            repository whose encoder leaks per request (the control), which must exceed it
            (Triton's L0_memory_growth, reliability.memory). Exit 1 when the check fails.
overload    per text pipeline: open-loop traffic (reliability.overload) at ``--overload_factor`` x
            the capacity of the control (the repository with Triton's unbounded queue, one
            instance), then the same rate on the repository with ofaserve repo's queue policy:
            the excess must be refused fast ("Exceeds maximum queue size") and the accepted p99
            stay within a bound derived from the settings and a measured single-request time,
            which the control must exceed; and on a copy whose queued models have one instance
            each (why they get two). Timed: run it on a quiet machine. Exit 1 when it fails.
oversized   a flood of requests far over the text limits (reliability.oversized): RSS and
            /dev/shm of tritonserver + stubs before and after, on the default limits and on
            the same repository without limits; every request refused with the limit's error.

The helpers are imported by tests/test_reliability.py (reduced counts, hard bounds).
Every loop here is bounded in count and in time; every server started here is stopped.

Modules, by concern (each imports only those above it)::

    probes          processes, RSS and /dev/shm of a running server; bounded waits; ROOT, MIB
    traffic         request helpers, the load run and its checks, bad-input cases, background traffic
    faults          `ofaserve serve` / tritonserver / stub kills, busy ports (ServeCLI)
    memory          the memory-growth check and its leaking control
    overload        open-loop load above capacity, the bound on accepted latency, the lone-instance copy
    oversized       the flood of requests over the text limits and its unlimited control
    export_faults   interrupted `ofaserve export`; the tiny and real models the scenarios use
    scenarios       the scenarios above, composed of those helpers
    report          the Markdown report of a run's JSON
    cli             build_parser, main (`python -m ofaserve.benchmarks.reliability`)
"""
