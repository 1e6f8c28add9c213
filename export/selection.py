"""Choosing the subnet (width, depth) to export: by dev score drop, or by latency measured here."""
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
from ofaserve.core.subnet import Subnet
from ofaserve.core.vocabulary import DropBound, Runtime
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


def layer_fraction(sub: Subnet, num_layers: int) -> float:
    """The fraction of the encoder's matmuls a subnet runs: its width times the layers its
    depth keeps (a layer's matmuls all shrink with the width)."""
    return sub.width.value * len(sub.depth.layers(num_layers)) / num_layers


def _row(sub: Subnet, num_layers: int, dev_score: float) -> dict[str, Any]:
    row = {"subnet": sub.key, "width": sub.width.key, "width_mult": sub.width.value, "dev_score": dev_score}
    if not sub.depth.full:
        row.update(depth_mult=sub.depth.value, layers=sub.depth.layers(num_layers))
    row["encoder_fraction"] = round(layer_fraction(sub, num_layers), 4)
    return row


def select_by_metric_drop(src: Source, max_drop: float,
                          bound: DropBound = DropBound.CI95_UPPER) -> tuple[Subnet, dict]:
    """The cheapest trained subnet (width x layers kept; the narrowest width when depth 1.0
    alone was trained) whose dev drop from the teacher is within ``max_drop``; of equally
    cheap ones the best scoring. ``bound``: the drop's 95% interval's upper end (default) or
    the drop itself."""
    scores = src.manifest.dev_scores()
    metric, n = scores["metric"], int(src.config["num_hidden_layers"])
    if bound == DropBound.CI95_UPPER and len(scores["drop_ci95"]) < len(scores["subnets"]):
        raise OfaserveError(f"{src.folder} has no dev intervals of the drop from the teacher (written by an "
                            f"earlier ofaserve compress): re-run `ofaserve compress`, or choose by the drop "
                            f"itself with --drop_bound {DropBound.POINT}")
    rows = []
    for sub, a in scores["subnets"].items():
        row = {**_row(sub, n, a), "drop_vs_teacher": scores["teacher"] - a}
        if sub in scores["drop_ci95"]:
            row["drop_ci95"] = list(scores["drop_ci95"][sub])
        held = row["drop_ci95"][1] if bound == DropBound.CI95_UPPER else row["drop_vs_teacher"]
        rows.append({**row, "within": held <= max_drop + 1e-12})
    ok = [r for r in rows if r["within"]]
    sel = {"mode": "max_metric_drop", "metric": metric, "max_metric_drop": max_drop, "drop_bound": bound.value,
           "teacher_dev_score": scores["teacher"], "table": rows}
    if not ok:
        upper = bound == DropBound.CI95_UPPER
        what = "the upper end of whose dev drop's 95% interval is" if upper else "is"
        instead = (f"allow a larger --max_metric_drop, or hold the drop itself (--drop_bound {DropBound.POINT})"
                   if upper else "allow a larger --max_metric_drop")
        raise OfaserveError(f"no trained subnet {what} within {max_drop} dev {metric} of the teacher "
                            f"({scores['teacher']:.4f}): " + ", ".join(_drop_text(r) for r in rows) + f"; {instead}")
    chosen = min(ok, key=lambda r: (r["encoder_fraction"], -r["dev_score"], r["width_mult"]))
    sel["chosen"] = chosen["subnet"]
    return _subnet_of(chosen), sel


def _drop_text(row: dict) -> str:
    interval = f" (drop {row['drop_vs_teacher']:+.4f}, 95% CI {_interval(row)})" if "drop_ci95" in row else ""
    return f"{row['subnet']}: {row['dev_score']:.4f}{interval}"


def _subnet_of(row: dict) -> Subnet:
    return Subnet.of(row["width_mult"], row.get("depth_mult", 1.0))


def select_by_latency(sn, src: Source, scratch: Path, budget_ms: float, batch: int, seq: int, runtime: str,
                      opset: int, progress: bool = True) -> tuple[Subnet, dict, Path]:
    from tqdm.auto import tqdm

    if runtime not in RUNTIMES:
        raise OfaserveError(f"--runtime must be one of {RUNTIMES}, not {runtime!r}")
    if seq > int(src.config["max_position_embeddings"]):
        raise OfaserveError(f"--seq_len {seq} exceeds the model's max_position_embeddings "
                            f"{src.config['max_position_embeddings']}")
    scores = src.manifest.dev_scores()
    n = int(src.config["num_hidden_layers"])
    fns = {}
    for sub in tqdm(sorted(scores["subnets"], reverse=True), desc="build per subnet", disable=not progress or None):
        folder = scratch / selection_folder(sub)
        info = build_artifacts(sn, src, sub.width.value, folder, opset, onnx_model=runtime != "paddle",
                               fuse=runtime == "onnxruntime", depth=sub.depth.value)
        fns[sub] = artifact_logits.make(runtime, folder, info["artifacts"])
    log.info("measuring %s latency of %d subnets at %dx%d (round robin)", runtime, len(fns), batch, seq)
    lat = measure_interleaved(fns, int(src.config["vocab_size"]), batch, seq)
    rows = []
    for sub, l in lat.items():
        rows.append({**_row(sub, n, scores["subnets"][sub]),
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
    sel["chosen"] = chosen["subnet"]
    sub = _subnet_of(chosen)
    return sub, sel, scratch / selection_folder(sub)


def selection_folder(sub: Subnet) -> str:
    """The scratch folder of one subnet's artifacts built for timing (reused by the export)."""
    return f"w{sub.key}"


def choose_within_budget(rows: list[dict], budget_ms: float, where: str = "") -> dict:
    """The subnet with the best dev score whose latency meets the budget; ties go to the
    cheaper one (the narrower width at depth 1.0)."""
    ok = [r for r in rows if r["latency_ms"] <= budget_ms]
    if not ok:
        raise OfaserveError(f"no trained subnet meets {budget_ms} ms {where} "
                            f"(fastest: {min(r['latency_ms'] for r in rows):.1f} ms)")
    return max(ok, key=lambda r: (r["dev_score"], -r.get("encoder_fraction", r["width_mult"]), -r["width_mult"]))


def selection_table(sel: dict) -> str:
    metric = sel.get("metric", "accuracy")
    grid = any("depth_mult" in r for r in sel["table"])

    def name(r: dict) -> str:  # a width-only table reads as it did before depths
        return f"{r['width']} | {r.get('depth_mult', 1.0):g}" if grid else r["width"]

    first = "width | depth" if grid else "width"
    if sel["mode"] == "latency_budget":
        head = (f"| {first} | dev {metric} | {sel['runtime']} ms ({sel['batch_size']}x{sel['seq_len']}) | "
                f"<= {sel['latency_budget_ms']} ms |")
        rows = [f"| {name(r)} | {r['dev_score']:.4f} | {r['latency_ms']:.1f} | "
                f"{'yes' if r['meets_budget'] else 'no'} |" for r in sel["table"]]
    else:
        upper = sel.get("drop_bound", DropBound.POINT) == DropBound.CI95_UPPER
        held = "upper end" if upper else "drop"
        head = f"| {first} | dev {metric} | drop vs teacher | 95% CI | {held} <= {sel['max_metric_drop']} |"
        rows = [f"| {name(r)} | {r['dev_score']:.4f} | {r['drop_vs_teacher']:+.4f} | {_interval(r)} | "
                f"{'yes' if r['within'] else 'no'} |" for r in sel["table"]]
    return "\n".join([head, "|" + "---|" * (head.count("|") - 1)] + rows)


def _interval(row: dict) -> str:
    ci = row.get("drop_ci95")
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "n/a"
