"""``--precision auto``: serve the fastest precision that keeps the answers, on this CPU.

The export measured every precision variant on dev against FP32 and recorded which passed
its gate (accuracy drop and prediction agreement). Which of those is fastest depends on
the CPU: bf16 needs AVX512_BF16 or AMX, INT8 pays off only with VNNI/AMX (without them
NNCF's INT8 runs slower than f32). So the choice is made by timing, here, on the machine
that builds the repository: every candidate that passed the gate and exists on this CPU
runs through the serving runner itself, interleaved round by round so that load changes
hit every candidate alike, on a fixed 16 x 128 batch and on real dev batches of 16.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ofaserve.core.machine import machine_info
from ofaserve.core.manifests import ExportManifest
from ofaserve.core.tasks import Split
from ofaserve.core.tokenizer import encode_batch
from ofaserve.core.vocabulary import Precision, Runtime
from ofaserve.runtime import capabilities as cpu, runtimes

BATCH = 16
FIXED_SEQ = 128
MIN_ROUNDS = 5


@dataclass(frozen=True)
class Candidate:
    precision: Precision  # FP32, BF16 or INT8
    artifact: str  # the export manifest's artifacts key the encoder would run
    gate: dict[str, Any]  # the export's dev record of this variant ({} for fp32, the reference)


def openvino_artifact(manifest: ExportManifest, precision: Precision) -> str | None:
    """The export artifact OpenVINO runs at ``precision``: the packed graph where there is
    one (several sentences per row), the NNCF INT8 IR for int8; None when not exported."""
    artifacts = manifest.artifacts
    keys = ("openvino_packed_int8", "openvino_int8") if precision == Precision.INT8 else ("onnx_packed", "onnx")
    return next((k for k in keys if artifacts.get(k)), None)


def candidates(manifest: ExportManifest, capabilities: list[str]) -> tuple[list[Candidate], dict[str, str]]:
    """(what can be served here, why each other precision cannot)."""
    records = manifest.precisions
    found = [Candidate(Precision.FP32, openvino_artifact(manifest, Precision.FP32) or "onnx", {})]
    skipped: dict[str, str] = {}
    bf16 = records.get("openvino_bf16") or {}
    if "BF16" not in capabilities:
        skipped[Precision.BF16] = f"this CPU has no BF16 (OpenVINO capabilities: {' '.join(capabilities)})"
    elif not bf16.get("gate_passed"):
        skipped[Precision.BF16] = bf16.get("gate_failed_because") or bf16.get("skipped") or "not measured by the export"
    else:
        found.append(Candidate(Precision.BF16, found[0].artifact, bf16))
    int8_key = openvino_artifact(manifest, Precision.INT8)
    if "INT8" not in capabilities:
        skipped[Precision.INT8] = f"this CPU has no INT8 (OpenVINO capabilities: {' '.join(capabilities)})"
    elif int8_key is None:
        why = [r.get("not_shipped_because") or r.get("error") for r in
               (records.get("openvino_packed_int8") or {}, records.get("openvino_int8") or {})]
        skipped[Precision.INT8] = next((w for w in why if w), "the export shipped no INT8 IR")
    else:
        found.append(Candidate(Precision.INT8, int8_key, records.get(int8_key) or {}))
    return found, skipped


def fixed_batch(vocab_size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16 x 128 random token ids with [CLS]/[SEP] ends: the seed's fixed benchmark shape."""
    ids = np.random.default_rng(seed).integers(5, max(6, vocab_size), size=(BATCH, FIXED_SEQ), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 2, 3
    return ids, np.zeros_like(ids)


def real_batches(dev: Split, tokenizer, pad_id: int, count: int, seed: int = 0) -> list[tuple]:
    """``count`` batches of 16 dev inputs, padded to each batch's longest, as clients send."""
    order = np.random.default_rng(seed).permutation(len(dev))
    return [encode_batch(tokenizer, dev.inputs(order[(k * BATCH) % len(dev):][:BATCH]), pad_id)
            for k in range(count)]


def time_interleaved(runners: dict[str, Callable], workloads: dict[str, list[tuple]], budget_s: float,
                     min_rounds: int = MIN_ROUNDS) -> dict[str, dict[str, dict[str, float]]]:
    """p50/mean ms per (runner, workload): each round calls every runner once per workload,
    in rotating order; at least ``min_rounds`` rounds, more while the budget lasts."""
    names = list(runners)
    for fn in runners.values():  # first calls compile kernels for the shapes
        for batches in workloads.values():
            fn(*batches[0])
    times = {n: {w: [] for w in workloads} for n in names}
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < budget_s:
        for n in names[rounds % len(names):] + names[:rounds % len(names)]:
            for w, batches in workloads.items():
                batch = batches[rounds % len(batches)]
                t = time.perf_counter()
                runners[n](*batch)
                times[n][w].append((time.perf_counter() - t) * 1000)
        rounds += 1
    return {n: {w: {"p50_ms": float(np.percentile(v, 50)), "mean_ms": float(statistics.fmean(v)), "calls": len(v)}
                for w, v in per.items()} for n, per in times.items()}


def choose_precision(export_dir: Path, manifest: ExportManifest, *, threads: int, budget_s: float = 30.0,
                     dev: Split | None = None, tokenizer=None) -> dict[str, Any]:
    """Time every candidate of one export with the serving runner; the record names the
    fastest (lowest geometric mean of the p50s over the workloads) and the whole table."""
    capabilities = list(cpu.current().openvino)
    found, skipped = candidates(manifest, capabilities)
    pad_id = int(manifest.pad_token_id)
    if len(found) == 1:  # nothing to choose between: no timing
        runner = runtimes.load_runner(Runtime.OPENVINO, export_dir / manifest.artifacts[found[0].artifact], Precision.FP32,
                                      threads, pad_id=pad_id)
        row = {"precision": Precision.FP32, "runtime": Runtime.OPENVINO, "artifact": found[0].artifact,
               "executed": runner.executed.get("precision"), "delta_vs_fp32": 0.0, "agreement_with_fp32": 1.0,
               "p50_ms": {}, "calls": {}, "score_ms": None}
        return {"chosen": Precision.FP32, "artifact": found[0].artifact, "candidates": [row], "not_candidates": skipped,
                "capabilities": capabilities, "threads": threads, "workloads": [], "budget_s": 0.0,
                "machine": machine_info()}
    loaded = {c.precision: runtimes.load_runner(Runtime.OPENVINO, export_dir / manifest.artifacts[c.artifact],
                                                c.precision, threads, pad_id=pad_id) for c in found}
    workloads = {"fixed_16x128": [fixed_batch(int(manifest.vocab_size))]}
    if dev and tokenizer is not None:
        workloads["real_dev_16"] = real_batches(dev, tokenizer, pad_id, count=32)
    timings = time_interleaved(loaded, workloads, budget_s)
    rows = []
    for c in found:
        score = math.exp(statistics.fmean(math.log(t["p50_ms"]) for t in timings[c.precision].values()))
        rows.append({"precision": c.precision, "runtime": Runtime.OPENVINO, "artifact": c.artifact,
                     "executed": getattr(loaded[c.precision], "executed", {}).get("precision"),
                     "delta_vs_fp32": c.gate.get("delta_vs_fp32", 0.0),
                     "agreement_with_fp32": c.gate.get("agreement_with_fp32", 1.0),
                     "p50_ms": {w: round(t["p50_ms"], 3) for w, t in timings[c.precision].items()},
                     "calls": {w: t["calls"] for w, t in timings[c.precision].items()},
                     "score_ms": round(score, 3)})
    chosen = min(rows, key=lambda r: r["score_ms"])
    return {"chosen": chosen["precision"], "artifact": chosen["artifact"], "candidates": rows,
            "not_candidates": skipped, "capabilities": capabilities, "threads": threads,
            "workloads": list(workloads), "budget_s": budget_s, "machine": machine_info()}


def choice_table(choice: dict[str, Any]) -> str:
    """The candidate table as Markdown (what `ofaserve repo` prints and the manifest keeps)."""
    workloads = choice["workloads"]
    head = ("| precision | executed | dev acc vs fp32 | agreement | "
            + " | ".join(f"p50 {w} ms" for w in workloads) + " | |")
    rows = [head, "|" + "---|" * (5 + len(workloads))]
    for r in choice["candidates"]:
        rows.append(f"| {r['precision']} | {r['executed']} | {r['delta_vs_fp32']:+.4f} | "
                    f"{r['agreement_with_fp32']:.2%} | " + " | ".join(f"{r['p50_ms'][w]:.1f}" for w in workloads)
                    + f" | {'chosen' if r['precision'] == choice['chosen'] else ''} |")
    rows += [f"| {p} | not a candidate: {why} |" + " |" * (3 + len(workloads)) for p, why in
             choice["not_candidates"].items()]
    return "\n".join(rows)
