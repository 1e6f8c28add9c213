"""OpenVINO's CPU pinning against Triton's instance model: each python-backend instance is its
own process, so N encoder instances are N OpenVINO runtimes on one machine. This times one
batch per call in P processes at once, each compiling the same model with T threads, with
OpenVINO's ``ENABLE_CPU_PINNING`` on (its default on Linux) and off, configurations
interleaved over rounds so load drifts hit them alike.

    python -m benchmarks.records.cpu_pinning --model runs/x/export/w1.0/onnx/model.onnx \\
        --output benchmarks/results/cpu_pinning.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import shlex
import sys
import time

import numpy as np


def _worker(model: str, threads: int, pinning: bool, batch: tuple[int, int], calls: int, start, queue) -> None:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1, "ENABLE_CPU_PINNING": pinning})
    feeds = {i.get_any_name(): np.ones(batch, dtype=np.int64) for i in compiled.inputs}
    request = compiled.create_infer_request()
    for _ in range(2):  # kernels set up, not timed
        request.infer(feeds)
    start.wait()
    seconds = []
    for _ in range(calls):
        t = time.perf_counter()
        request.infer(feeds)
        seconds.append(time.perf_counter() - t)
    queue.put(seconds)


def measure(model: str, procs: int, threads: int, pinning: bool, batch: tuple[int, int], calls: int) -> dict:
    """One configuration once: every process's per-call seconds, and the calls per second of
    all of them together."""
    ctx = mp.get_context("spawn")
    start, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(model, threads, pinning, batch, calls, start, queue))
               for _ in range(procs)]
    for w in workers:
        w.start()
    per_process = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return {"seconds": [s for p in per_process for s in p], "wall_s": max(sum(p) for p in per_process)}


def main(argv: list[str] | None = None) -> int:
    from ofaserve.core.files import write_json
    from ofaserve.core.machine import describe, machine_info
    from ofaserve.core.manifests import now_iso

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an ONNX (or OpenVINO IR) encoder taking input_ids, token_type_ids")
    p.add_argument("--output", required=True, help="the JSON record to write (a .md goes next to it)")
    p.add_argument("--procs", default="1,2", help="comma-separated process counts (default: 1,2)")
    p.add_argument("--threads", default="1,2", help="comma-separated OpenVINO threads per process (default: 1,2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all configurations (default: 3)")
    p.add_argument("--calls", type=int, default=10, help="timed calls per process per round (default: 10)")
    p.add_argument("--batch", default="16x128", help="rows x tokens per call (default: 16x128)")
    args = p.parse_args(argv)
    batch = tuple(int(v) for v in args.batch.split("x"))
    configs = [(pr, th, pin) for pr, th, pin in itertools.product(
        [int(v) for v in args.procs.split(",")], [int(v) for v in args.threads.split(",")], (True, False))]
    samples: dict[tuple, list] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in (configs if r % 2 == 0 else configs[::-1]):
            samples[c].append(measure(args.model, *c, batch=batch, calls=args.calls))
            print(f"round {r + 1}/{args.rounds}: {c} done", file=sys.stderr, flush=True)
    rows = []
    for (procs, threads, pinning), runs in samples.items():
        ms = np.array([s for run in runs for s in run["seconds"]]) * 1000
        rows.append({"processes": procs, "threads_per_process": threads, "cpu_pinning": pinning,
                     "calls": int(ms.size), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                     "p90_ms": round(float(np.percentile(ms, 90)), 1),
                     "batches_per_s": round(procs * args.calls * len(runs) / sum(run["wall_s"] for run in runs), 2)})
    record = {"date": now_iso(), "command": " ".join(["python -m benchmarks.records.cpu_pinning",
                                                      *(shlex.quote(a) for a in (argv or sys.argv[1:]))]),
              "machine": machine_info(), "model": args.model, "batch": list(batch), "rounds": args.rounds,
              "rows": rows}
    write_json(args.output, record)
    md = [f"# OpenVINO CPU pinning, {len(configs)} configurations", "",
          f"{record['date']} on {describe(record['machine'])}", "", f"`{record['command']}`", "",
          "| processes | threads each | pinning | calls | p50 ms | p90 ms | batches/s, all processes |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['processes']} | {r['threads_per_process']} | {'on' if r['cpu_pinning'] else 'off'} | {r['calls']} "
           f"| {r['p50_ms']} | {r['p90_ms']} | {r['batches_per_s']} |" for r in rows]
    out_md = str(args.output).rsplit(".", 1)[0] + ".md"
    with open(out_md, "w") as f:
        f.write("\n".join(md) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
