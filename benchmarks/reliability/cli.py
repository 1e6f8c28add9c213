"""Command line: `python -m ofaserve.benchmarks.reliability` (flags: --help)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ofaserve.core.machine import machine_info
from ofaserve.core.manifests import now_iso
from ofaserve.core.files import write_json
from ofaserve.core.stage_cli import HelpFormatter

from ofaserve.benchmarks.reliability.export_faults import REAL_EXPORT_CANDIDATES, find_real_export, tiny_compress, tiny_export
from ofaserve.benchmarks.reliability.probes import ROOT
from ofaserve.benchmarks.reliability.report import to_markdown
from ofaserve.benchmarks.reliability.scenarios import scenario_export, scenario_faults, scenario_load_and_bad_input, scenario_shm_fresh, \
    scenario_memory_growth, scenario_overload, scenario_oversized, shm_per_instance


def build_parser() -> argparse.ArgumentParser:
    from ofaserve.benchmarks import reliability  # the package docstring (imported by now: it imports this module)
    p = argparse.ArgumentParser(prog="python -m ofaserve.benchmarks.reliability",
                                description=reliability.__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--export_dir", type=Path, default=None,
                   help="a real export to test besides the tiny one [default: the first of "
                        + ", ".join(REAL_EXPORT_CANDIDATES) + " that exists]")
    p.add_argument("--no_tiny", action="store_true", help="skip the tiny model")
    p.add_argument("--requests", type=int, default=5000,
                   help="ensemble requests in the load scenario (memory growth is measured over them)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads in the load scenario")
    p.add_argument("--batch_size", type=int, default=4, help="sentences per load request")
    p.add_argument("--good_rounds", type=int, default=10,
                   help="bad-input scenario: passes over the good batches per good worker, sent while the bad cases run")
    p.add_argument("--bad_rounds", type=int, default=3,
                   help="bad-input scenario: times each bad case is sent per bad worker")
    p.add_argument("--memory_requests", type=int, default=20000,
                   help="memory scenario: requests per server (the repository, then its leaking control); the "
                        "growth is measured over the second half")
    p.add_argument("--overload_factor", type=float, default=3.0,
                   help="overload scenario: open-loop rate as a multiple of the capacity measured closed loop")
    p.add_argument("--overload_seconds", type=float, default=20.0, help="overload scenario: seconds of open-loop traffic")
    p.add_argument("--overload_pipelines", default="ensemble,fused",
                   help="overload scenario: comma-separated text pipelines to build and overload (ensemble, fused)")
    p.add_argument("--overload_max_queue_size", type=int, default=None,
                   help="overload scenario: ofaserve repo --max_queue_size (None: its default)")
    p.add_argument("--overload_instances", type=int, default=None,
                   help="overload scenario: ofaserve repo --instances (None: its default)")
    p.add_argument("--no_overload_lone_instance", dest="overload_lone_instance", action="store_false",
                   help="overload scenario: skip the run on a copy whose queued models have one instance each")
    p.add_argument("--oversized_requests", type=int, default=40,
                   help="oversized scenario: requests far over the text limits, sent 4 at a time")
    p.add_argument("--oversized_mib", type=float, default=8.0,
                   help="oversized scenario: MiB of text per request (64 rows)")
    p.add_argument("--scenarios", default="load,shm,faults,export,memory",
                   help="comma-separated: load (includes bad input), shm, faults, export, memory (growth check "
                        "with a leaking control), overload (open loop at --overload_factor x capacity against the "
                        "queue limits; timed: run it on a quiet machine), oversized (memory before/after a flood "
                        "of requests over the text limits, and without the limits)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "reliability.json",
                   help="the JSON record to write; the Markdown report goes next to it (same name, .md)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    scenarios = set(args.scenarios.split(","))
    report: dict[str, Any] = {"created": now_iso(), "machine": machine_info(),
                              "command": " ".join(["python -m ofaserve.benchmarks.reliability"] + list(argv or sys.argv[1:])),
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
        if "memory" in scenarios:
            report["memory_growth"] = [scenario_memory_growth(export, kind, work, args) for export, kind in exports]
        if "overload" in scenarios:
            report["overload"] = [r for export, kind in exports for r in scenario_overload(export, kind, work, args)]
        if "oversized" in scenarios:
            report["oversized"] = [scenario_oversized(export, kind, work, args) for export, kind in exports]
    report["load_avg_end"] = os.getloadavg()
    write_json(args.output, report)
    args.output.with_suffix(".md").write_text(to_markdown(report))
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    failed = [f"{check} ({m['served_name']})" for check in ("memory_growth", "overload", "oversized")
              for m in report.get(check, []) if not m.get("ok")]
    if failed:
        print(f"checks FAILED: {', '.join(failed)} (see the report)", file=sys.stderr)
        return 1
    return 0
