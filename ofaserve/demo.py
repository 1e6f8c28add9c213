"""`ofaserve demo` / `make demo`: the whole pipeline on the embedded CPU default.

compress (quick profile) -> export width 1.0 and the compressed width (parity checked)
-> `ofaserve repo --target cpu` -> bundled Triton server -> a few sentences classified
over gRPC -> benchmarks/run.py at batch 16, full width vs compressed -> tables + summary.

Each stage is the same entry point a user types (``<stage>.cli.main(argv)``), and the
commands are printed. Finished stages are reused on a second run (their manifest is
the proof they finished) unless ``--redo`` names them. The server is stopped on exit,
Ctrl-C, SIGTERM or failure.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ofaserve.core.naming import model_name

STAGES = ["compress", "export", "repo", "bench"]
SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The plot is a tired retread and the jokes fall flat.",
    "Not the best film of the year, but a warm and generous one.",
    "I wanted my two hours back.",
    "Un film magnifique 🎬 — 美しい映画",  # non-English and emoji are answered too
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofaserve demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/demo", help="where every artifact goes (default: runs/demo)")
    p.add_argument("--profile", default="quick", choices=["quick", "full"], help="compress profile (default: quick)")
    p.add_argument("--width_mult", default="0.6667", help="compressed width to export and serve (default: 0.6667)")
    p.add_argument("--redo", default="", help=f"comma-separated stages to redo even if finished ({','.join(STAGES)}, or all)")
    p.add_argument("--requests", type=int, default=30, help="measured requests per model/workload in the benchmark")
    p.add_argument("--seq_len", type=int, default=128,
                   help="sequence length of the fixed-length benchmark (the seed's 128); exports serve up to it")
    p.add_argument("--grpc_port", type=int, default=0, help="gRPC port of the demo server (default: a free port)")
    return p


def _run_stage(label: str, func, argv: list[str]) -> None:
    print(f"\n=== {label}: ofaserve {' '.join(argv)}", flush=True)
    code = func(argv)
    if code:
        raise SystemExit(f"demo: stage {label} failed (exit {code}); fix the error above and rerun `make demo`")


def _finished(folder: Path, stage: str) -> bool:
    from ofaserve.core.artifacts import OfaserveError, read_manifest
    try:
        read_manifest(folder, stage=stage)
        return True
    except OfaserveError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ofaserve.compress.cpu import configure
    configure()

    work = Path(args.workdir)
    redo = set(STAGES) if args.redo == "all" else {s for s in args.redo.split(",") if s}
    unknown = redo - set(STAGES)
    if unknown:
        print(f"error: --redo: unknown stage(s) {sorted(unknown)}; choose from {STAGES} or all", file=sys.stderr)
        return 2
    from ofaserve.core.artifacts import OfaserveError, terminate_like_interrupt
    terminate_like_interrupt()  # SIGTERM unwinds like Ctrl-C, through the server's context manager
    t_start = time.time()
    timings: dict[str, float] = {}
    try:
        return _pipeline(args, work, redo, timings, t_start)
    except OfaserveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ndemo interrupted: finished stages are kept and reused on the next `make demo`", file=sys.stderr)
        return 130


def latency_figures(report: dict) -> dict:
    """The figures of the latency tables the demo prints (report.md), from report.json."""
    def row(r: dict, **extra) -> dict:
        return {"model": r["model"], "workload": r["workload"], **extra, "runtime": r.get("runtime"),
                **{k: r["latency_ms"][k] for k in ("p50", "p90", "p99", "mean")},
                "throughput_sps": r.get("throughput_sps")}
    return {"triton_grpc": [row(r, concurrency=r["concurrency"]) for r in report.get("results", [])],
            "in_process": [row(b) for b in report.get("baselines", [])],
            "comparisons": report.get("comparisons", {})}


def _pipeline(args, work: Path, redo: set[str], timings: dict, t_start: float) -> int:
    from ofaserve.compress import cli as compress_cli
    from ofaserve.core.artifacts import read_manifest, write_json
    from ofaserve.core.tables import results_table
    from ofaserve.export import cli as export_cli
    from ofaserve.serve import cli as serve_cli

    compress_dir = work / "compress"
    t = time.time()
    if "compress" in redo or not _finished(compress_dir, "compress"):
        _run_stage("compress", compress_cli.main,
                   ["--profile", args.profile, "--output_dir", str(compress_dir), "--overwrite"])
    else:
        print(f"\n=== compress: reusing {compress_dir} (--redo compress to retrain)")
    timings["compress_s"] = round(time.time() - t, 1)
    cm = read_manifest(compress_dir, stage="compress")

    exports = {}
    t = time.time()
    for width in ("1.0", args.width_mult):
        out = work / "export" / f"w{width}"
        if "export" in redo or not _finished(out, "export"):
            _run_stage(f"export {width}", export_cli.main,
                       ["--model_name_or_path", str(compress_dir), "--width_mult", width, "--output_dir", str(out),
                        "--max_seq_length", str(max(args.seq_len, cm["max_seq_length"])), "--overwrite"])
        else:
            print(f"\n=== export {width}: reusing {out}")
        exports[width] = out
    timings["export_s"] = round(time.time() - t, 1)

    repo = work / "model_repository"
    t = time.time()
    if {"repo", "export"} & redo or not (repo / "manifest.json").is_file():
        _run_stage("repo", serve_cli.repo_main,
                   ["--export_dir", *map(str, exports.values()), "--target", "cpu", "--output", str(repo)])
    else:
        print(f"\n=== repo: reusing {repo}")
    timings["repo_s"] = round(time.time() - t, 1)

    from ofaserve.serve.server import TritonServer, free_port
    grpc_port = args.grpc_port or free_port()
    print(f"\n=== serve: starting the bundled Triton server on {repo} (gRPC 127.0.0.1:{grpc_port})", flush=True)
    bench_dir = work / "bench"
    with TritonServer(repo, grpc_port=grpc_port, http_port=free_port(), metrics_port=free_port()) as server:
        print(f"ready: gRPC {server.grpc_url}, models: {', '.join(sorted(server.models_ready()))}")
        from ofaserve.serve.client import classify
        names = {w: model_name("bert", w) for w in exports}
        compressed = names[args.width_mult]
        print(f"\n=== classify over gRPC ({compressed}):")
        answers = classify(SENTENCES, url=server.grpc_url, model=compressed)
        for text, ans in zip(SENTENCES, answers):
            probs = ", ".join(f"{k}={v:.3f}" for k, v in ans["probs"].items())
            print(f"  {ans['label']:>8}  ({probs})  {text!r}")
        t = time.time()
        from ofaserve.benchmarks import run as bench
        _run_stage("bench", bench.main,
                   ["--url", server.grpc_url, "--model_repository", str(repo), "--models", ",".join(names.values()),
                    "--batch_size", "16", "--seq_len", str(args.seq_len), "--real_text", "--concurrency", "1",
                    "--requests", str(args.requests), "--output_dir", str(bench_dir)])
        timings["bench_s"] = round(time.time() - t, 1)
    print("server stopped")

    report = json.loads((bench_dir / "report.json").read_text())
    print(f"\n=== Accuracy per width ({cm['task']}, compress profile {args.profile})\n")
    print(results_table(cm))
    print(f"\n=== Latency (batch 16, gRPC, this machine)\n")
    print((bench_dir / "report.md").read_text())
    timings["total_s"] = round(time.time() - t_start, 1)
    summary = {
        "compress": {"dir": str(compress_dir), "results": cm["results"]},
        "exports": {w: {"dir": str(p), "manifest": read_manifest(p, stage="export")} for w, p in exports.items()},
        "model_repository": str(repo),
        "classified": [{"text": s, **a} for s, a in zip(SENTENCES, answers)],
        "benchmark": {"dir": str(bench_dir), "report": str(bench_dir / "report.json"),
                      "latency": latency_figures(report)},
        "timings": timings,
    }
    write_json(work / "summary.json", summary)
    print(f"\nArtifacts: compress {compress_dir} | exports {', '.join(map(str, exports.values()))} | "
          f"repository {repo} | benchmark {bench_dir} | summary {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
