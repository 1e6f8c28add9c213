"""Side-by-side table of several benchmark reports (e.g. one per served runtime/precision).

One server serves one repository, and every repository names its models the same, so
served runtimes are compared run by run: ``ofaserve bench`` once per repository (e.g.
openvino fp32, openvino bf16, paddle), then

    python -m benchmarks.records.compare runs/bench/ov_fp32 runs/bench/ov_bf16 -o runs/bench/compare.md

Only numbers from the reports are printed; the first report's full-width p50 is the
reference of the cross-report column. Runs at different times see different machine
noise: prefer in-process ``--runtimes`` ratios (same run, interleaved) for tight claims.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from ofaserve.benchmarks.report import _f, _ms, md_table
from ofaserve.core.errors import OfaserveError


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise OfaserveError(f"cannot read benchmark report {p}: {e}") from e


def _faster(entry: dict[str, Any], key: str, old_key: str, old_inverted: bool = False) -> float | None:
    """An entry's "N.NNx faster" ratio; reports before schema 2 kept it as ``old_key``, the
    real-text one as real / fixed latency (``old_inverted``)."""
    if key in entry:
        return entry[key]
    old = entry.get(old_key)
    return (1 / old if old else None) if old_inverted else old


def compare_rows(reports: Sequence[dict[str, Any]], labels: Sequence[str], workload: str = "fixed",
                 concurrency: int = 1) -> list[list[str]]:
    rows = []
    ref = None
    for rep, label in zip(reports, labels):
        speed = {(s["model"], s["workload"], s.get("concurrency")): s for s in rep.get("comparisons", {}).get("speedup", [])
                 if not s.get("in_process")}
        over = {(o["model"], o["workload"]): o for o in rep.get("comparisons", {}).get("serving_overhead", [])}
        for r in rep.get("results", []):
            if r["workload"] != workload or r["concurrency"] != concurrency:
                continue
            p50 = r["latency_ms"]["p50"]
            if ref is None and p50 is not None:
                ref = p50  # first report's first (full width) row
            width = (rep.get("models", {}).get(r["model"]) or {}).get("width")
            rows.append([label, r["model"], "-" if width is None else f"{width:.4g}", r.get("runtime", "-"),
                         _ms(p50), _ms(r["latency_ms"]["p99"]), _f(r.get("throughput_sps")),
                         _f(_faster(speed.get((r["model"], workload, concurrency), {}), "faster_than_full_x",
                                    "speedup"), 2, "x"),
                         _f((ref / p50) if ref and p50 else None, 2, "x"),
                         _f(_faster(over.get((r["model"], workload), {}), "in_process_faster_x", "ratio"), 3, "x"),
                         rep.get("date", "-")])
    return rows


def _run_figures(rep: dict[str, Any], concurrency: int) -> tuple[dict[str, float], dict[str, float],
                                                                   dict[str, float]]:
    """One report's ({model: how much faster than full width on fixed input}, {model: how
    much faster real text is than fixed}, {model: how much faster in-process is than
    served, fixed input}), read from its comparisons; the first model is the reference."""
    cmp_ = rep.get("comparisons", {})
    first = next(iter(rep.get("models", {})), None)
    speed = {s["model"]: _faster(s, "faster_than_full_x", "speedup") for s in cmp_.get("speedup", [])
             if not s.get("in_process") and s["workload"] == "fixed" and s.get("concurrency") == concurrency
             and s["model"] != first}
    real = {x["model"]: _faster(x, "real_faster_x", "ratio", old_inverted=True) for x in cmp_.get("real_vs_fixed", [])
            if x.get("concurrency") == concurrency}
    overhead = {x["model"]: _faster(x, "in_process_faster_x", "ratio") for x in cmp_.get("serving_overhead", [])
                if x["workload"] == "fixed"}
    return ({m: v for m, v in speed.items() if v}, {m: v for m, v in real.items() if v},
            {m: v for m, v in overhead.items() if v})


def run_summary_rows(reports: Sequence[dict[str, Any]], labels: Sequence[str],
                     concurrency: int = 1) -> list[list[str]]:
    """One row per report: how much faster the compressed widths are than full width on
    fixed input and, per model, how much faster real text is than fixed (the same run's
    comparisons), to show run-to-run spread."""
    rows = []
    for rep, label in zip(reports, labels):
        speed, real, overhead = _run_figures(rep, concurrency)
        models = rep.get("models", {})
        pipeline = "ensemble" if any((models[m] or {}).get("composing") for m in models) else "fused"
        rows.append([label, pipeline, ", ".join(f"{m} {_f(x, 2, 'x')}" for m, x in speed.items()) or "-",
                     ", ".join(f"{m} {_f(real[m], 2, 'x')}" for m in models if m in real) or "-",
                     ", ".join(f"{m} {_f(overhead[m], 3, 'x')}" for m in models if m in overhead) or "-",
                     rep.get("date", "-")])
    return rows


def run_spread(reports: Sequence[dict[str, Any]], concurrency: int = 1) -> str:
    """Range and median over the reports of both figures of ``run_summary_rows``."""
    import numpy as np

    figures = [_run_figures(rep, concurrency) for rep in reports]
    columns = (("compressed faster than full, fixed", 0, 2), ("real text faster than fixed", 1, 2),
               ("in-process faster than served, fixed", 2, 3))
    parts = []
    for name, i, digits in columns:
        v = [x for fig in figures for x in fig[i].values()]
        if v:
            parts.append(f"{name}: {min(v):.{digits}f}x-{max(v):.{digits}f}x, median "
                         f"{float(np.median(v)):.{digits}f}x over {len(v)}")
    return "Spread: " + ("; ".join(parts) if parts else "no comparisons in these reports") + "."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.records.compare",
                                description="Merge several `ofaserve bench` reports into one Markdown table.")
    p.add_argument("reports", nargs="+", help="report folders or report.json files")
    p.add_argument("--labels", default=None, help="comma-separated labels, one per report (default: folder names)")
    p.add_argument("--workload", default="fixed", help="fixed or real")
    p.add_argument("--concurrency", type=int, default=1, help="concurrency level to compare")
    p.add_argument("--runs", action="store_true",
                   help="one row per report instead: fixed 16x128 speedup and real-text vs fixed ratio, to show "
                        "the spread of repeated runs")
    p.add_argument("-o", "--output", default=None, help="write the Markdown here (default: stdout)")
    args = p.parse_args(argv)
    try:
        reports = [load_report(r) for r in args.reports]
        labels = args.labels.split(",") if args.labels else [Path(r).name for r in args.reports]
        if len(labels) != len(reports):
            raise OfaserveError(f"{len(labels)} labels for {len(reports)} reports")
    except OfaserveError as e:
        print(f"benchmarks.records.compare: error: {e}", file=sys.stderr)
        return 2
    if args.runs:
        md = (f"# Repeated benchmark runs (concurrency {args.concurrency}, p50)\n\n"
              + md_table(["run", "text pipeline", "compressed faster than full, fixed", "real text faster than fixed",
                          "serving overhead, fixed: in-process faster than gRPC", "date"],
                         run_summary_rows(reports, labels, args.concurrency)) + "\n\n"
              + run_spread(reports, args.concurrency) + "\n")
    else:
        rows = compare_rows(reports, labels, args.workload, args.concurrency)
        md = (f"# Served runtimes compared ({args.workload}, concurrency {args.concurrency}, p50)\n\n"
              + md_table(["run", "model", "width", "runtime", "p50 ms", "p99 ms", "sent/s", "faster than full in run",
                          "faster than first run's full width", "serving overhead: in-process faster", "date"],
                         rows) + "\n")
    if args.output:
        Path(args.output).write_text(md)
    else:
        print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
