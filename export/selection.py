"""Choosing the width to export: by dev accuracy drop, or by latency measured here."""
from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.machine import machine_info
from ofaserve.core.vocabulary import Runtime
from ofaserve.core.width import Width
from ofaserve.export import artifact_logits
from ofaserve.export.build import build_artifacts
from ofaserve.export.source import Source

log = logging.getLogger("ofaserve.export")

# the runtimes --latency_budget_ms can time the widths on
RUNTIMES = (Runtime.OPENVINO, Runtime.ONNXRUNTIME, Runtime.PADDLE)


def latency_inputs(vocab_size: int, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, max(6, vocab_size), size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 2, 3
    return ids, np.zeros_like(ids)


def measure_interleaved(fns: dict[str, Any], vocab_size: int, batch: int, seq: int, budget_s: float = 3.0,
                        min_rounds: int = 5, max_rounds: int = 50) -> dict[str, dict[str, float]]:
    """Median/min ms per function, measured round-robin (one call of each per round) so that a
    load change on a shared machine hits every width alike instead of biasing one."""
    ids, types = latency_inputs(vocab_size, batch, seq)
    for fn in fns.values():
        for _ in range(2):
            fn(ids, types)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - start < budget_s * len(fns)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(ids, types)
            times[k].append((time.perf_counter() - t) * 1000)
        rounds += 1
    return {k: {"median_ms": float(statistics.median(v)), "min_ms": float(min(v)), "runs": len(v)}
            for k, v in times.items()}


def select_by_metric_drop(src: Source, max_drop: float) -> tuple[float, dict]:
    """The narrowest trained width whose dev score is within ``max_drop`` of the teacher's."""
    scores = src.manifest.dev_scores()
    metric = scores["metric"]
    rows = [{"width": Width(w).key, "width_mult": w, "dev_score": a,
             "drop_vs_teacher": scores["teacher"] - a, "within": scores["teacher"] - a <= max_drop + 1e-12}
            for w, a in scores["widths"].items()]
    ok = [r for r in rows if r["within"]]
    sel = {"mode": "max_metric_drop", "metric": metric, "max_metric_drop": max_drop,
           "teacher_dev_score": scores["teacher"], "table": rows}
    if not ok:
        raise OfaserveError(f"no trained width is within {max_drop} dev {metric} of the teacher "
                            f"({scores['teacher']:.4f}): " + ", ".join(f"{r['width']}: {r['dev_score']:.4f}"
                                                                       for r in rows))
    chosen = min(ok, key=lambda r: r["width_mult"])
    sel["chosen"] = chosen["width"]
    return chosen["width_mult"], sel


def select_by_latency(sn, src: Source, scratch: Path, budget_ms: float, batch: int, seq: int, runtime: str,
                      opset: int, progress: bool = True) -> tuple[float, dict, Path]:
    from tqdm.auto import tqdm

    if runtime not in RUNTIMES:
        raise OfaserveError(f"--runtime must be one of {RUNTIMES}, not {runtime!r}")
    if seq > int(src.config["max_position_embeddings"]):
        raise OfaserveError(f"--seq_len {seq} exceeds the model's max_position_embeddings "
                            f"{src.config['max_position_embeddings']}")
    scores = src.manifest.dev_scores()
    fns = {}
    for w in tqdm(sorted(scores["widths"], reverse=True), desc="build per width", disable=not progress or None):
        folder = scratch / f"w{Width(w).key}"
        info = build_artifacts(sn, src, w, folder, opset, onnx_model=runtime != "paddle", fuse=runtime == "onnxruntime")
        fns[w] = artifact_logits.make(runtime, folder, info["artifacts"])
    log.info("measuring %s latency of %d widths at %dx%d (round robin)", runtime, len(fns), batch, seq)
    lat = measure_interleaved(fns, int(src.config["vocab_size"]), batch, seq)
    rows = []
    for w, l in lat.items():
        rows.append({"width": Width(w).key, "width_mult": w, "dev_score": scores["widths"][w],
                     "latency_ms": round(l["median_ms"], 3), "latency_min_ms": round(l["min_ms"], 3),
                     "runs": l["runs"], "meets_budget": l["median_ms"] <= budget_ms})
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    if load is not None and load > (os.cpu_count() or 1):
        log.warning("load average %.1f > %d cores: latencies are inflated by other processes", load,
                    os.cpu_count() or 1)
    sel = {"mode": "latency_budget", "latency_budget_ms": budget_ms, "batch_size": batch, "seq_len": seq,
           "runtime": runtime, "machine": machine_info(), "load_average_1min": load,
           "threads": artifact_logits.threads(), "metric": scores["metric"], "teacher_dev_score": scores["teacher"],
           "table": rows}
    print(selection_table(sel))
    chosen = choose_within_budget(rows, budget_ms, f"on {runtime} at {batch}x{seq}")
    sel["chosen"] = chosen["width"]
    return chosen["width_mult"], sel, scratch / f"w{chosen['width']}"


def choose_within_budget(rows: list[dict], budget_ms: float, where: str = "") -> dict:
    """The width with the best dev score whose latency meets the budget; ties go to the narrower width."""
    ok = [r for r in rows if r["latency_ms"] <= budget_ms]
    if not ok:
        raise OfaserveError(f"no trained width meets {budget_ms} ms {where} "
                            f"(fastest: {min(r['latency_ms'] for r in rows):.1f} ms)")
    return max(ok, key=lambda r: (r["dev_score"], -r["width_mult"]))


def selection_table(sel: dict) -> str:
    metric = sel.get("metric", "accuracy")
    if sel["mode"] == "latency_budget":
        head = (f"| width | dev {metric} | {sel['runtime']} ms ({sel['batch_size']}x{sel['seq_len']}) | "
                f"<= {sel['latency_budget_ms']} ms |")
        rows = [f"| {r['width']} | {r['dev_score']:.4f} | {r['latency_ms']:.1f} | "
                f"{'yes' if r['meets_budget'] else 'no'} |" for r in sel["table"]]
    else:
        head = f"| width | dev {metric} | drop vs teacher | <= {sel['max_metric_drop']} |"
        rows = [f"| {r['width']} | {r['dev_score']:.4f} | {r['drop_vs_teacher']:+.4f} | "
                f"{'yes' if r['within'] else 'no'} |" for r in sel["table"]]
    return "\n".join([head, "|---|---|---|---|"] + rows)
