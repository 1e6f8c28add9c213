"""`ofaserve demo` / `make demo`: the whole pipeline on the embedded CPU default.

compress (quick profile) -> export width 1.0 and the compressed width (parity checked)
-> `ofaserve repo --target cpu` -> bundled Triton server -> a few sentences classified
over gRPC -> benchmarks/run.py at batch 16, full width vs compressed -> tables + summary.

Each stage is the same entry point a user types (``<stage>.cli.main(argv)``), and the
commands are printed. Finished stages are reused on a second run (their manifest is
the proof they finished) unless ``--redo`` names them. The server is stopped on exit,
Ctrl-C, SIGTERM or failure.

Time budget (``--budget_min``, 6.5 by default): machines differ several-fold in speed, so
instead of a fixed amount of work each stage gets a share of the time left when it
starts and sizes its work from its own measured speed (compress: training steps; exports:
the runtimes the demo serves, a dev subset for the later checks; bench: request counts).
The results table is never cut: teacher and every width on dev and test. The benchmark's
minimum (enough requests per cell for its ratios to mean something) is priced before
compress starts and set aside, so the stages before it cannot eat it: compress's share
shrinks instead. What was cut is printed when each stage ends and recorded in
``summary.json`` (``budget``).

Screen: one line when a stage starts, a progress line every ``--progress_s`` (elapsed,
time left of its share), one line when it ends. The stages' own log lines and printed
reports (compress's table, the exports' parity tables) go to ``<workdir>/demo.log``; the
screen gets a one-line summary of each, the tables once at the end, and every warning.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ofaserve.benchmarks.stats import MIN_RATIO_REQUESTS
from ofaserve.compress.bert import hf_config, paddle_config, resolve_model_path
from ofaserve.compress.submodel import flops, full_width_config
from ofaserve.core import quiet
from ofaserve.core.files import write_json
from ofaserve.core.interrupts import terminate_like_interrupt
from ofaserve.core.stage_cli import argument_type, latest_log_line, log_to_file
from ofaserve.core.status_line import Heartbeat, print_above_bars
from ofaserve.core.time_budget import Budget, clock_text
from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import CompressManifest, ExportManifest
from ofaserve.core.width import Width
from ofaserve.runtime import capabilities
from ofaserve.runtime.paddle_cpu import configure

STAGES = ["compress", "export", "repo", "bench"]
SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "The plot is a tired retread and the jokes fall flat.",
    "Not the best film of the year, but a warm and generous one.",
    "I wanted my two hours back.",
    "Un film magnifique 🎬 — 美しい映画",  # non-English and emoji are answered too
]
DEFAULT_BUDGET_MIN = 6.5
LOG_NAME = "demo.log"  # in --workdir: the stages' log lines and printed reports
# Shares of the time left, fixed when each stage starts. Compress is the only stage whose
# work scales freely above its floors (compress.step_budget: the results table, and the fewest
# training steps that learn); the exports' build and first dev pass, the repository and
# the server start are fixed costs, so their shares are sized to cover what those stages
# use at their floors on the slowest CPU with AVX-512 that has a demo record (the records
# benchmarks/results/demo_run*.json, one per CPU); where they finish early, the later
# stages and the bench get the time. A slower CPU overruns the budget at the floors, and
# the final report says by how much. The bench gets its share on top of its reserved
# minimum (bench_floor).
SHARES = {"compress": 0.5, "export": 0.35, "repo": 0.075, "serve": 0.03, "bench": 0.045}
# What `ofaserve export` checks that the cpu repository never serves (skipped under a budget)
SERVED_PARITY_RUNTIMES = ["openvino_packed"]
DEFAULT_AUTO_BUDGET_S = 20  # `ofaserve repo --auto_budget_s`'s default


# a trained width's canonical label ("2/3" and "0.66667" name "0.6667")
_width_key = argument_type(lambda text: Width.parse(text).key, "width")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ofaserve demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/demo", help="where every artifact goes (default: runs/demo)")
    p.add_argument("--profile", default="quick", choices=["quick", "full"], help="compress profile (default: quick)")
    p.add_argument("--width_mult", type=_width_key, default="0.6667",
                   help="compressed width to export and serve (default: 0.6667)")
    p.add_argument("--redo", default="", help=f"comma-separated stages to redo even if finished ({','.join(STAGES)}, or all)")
    p.add_argument("--requests", type=int, default=30,
                   help="measured requests per model/workload in the benchmark (the most; a budget may cut it, "
                        f"never below {MIN_RATIO_REQUESTS}, the fewest whose ratios the report quotes)")
    p.add_argument("--seq_len", type=int, default=128,
                   help="sequence length of the fixed-length benchmark (the seed's 128); exports serve up to it")
    p.add_argument("--grpc_port", type=int, default=0, help="gRPC port of the demo server (default: a free port)")
    p.add_argument("--budget_min", type=float, default=DEFAULT_BUDGET_MIN,
                   help=f"minutes the demo aims to finish in (default: {DEFAULT_BUDGET_MIN:g}); each stage sizes its "
                        "work from its measured speed and what it cut is printed and kept in summary.json; 0: no "
                        "budget (the profile and every export check in full)")
    p.add_argument("--progress_s", type=float, default=30.0,
                   help="seconds between the progress lines (elapsed, time left) printed while a stage runs "
                        "(default: 30; 0: none)")
    return p


def _run_stage(label: str, func, argv: list[str]) -> None:
    code = func(argv)
    if code:
        raise SystemExit(f"demo: stage {label} failed (exit {code}); fix the error above and rerun `make demo`")


def _finished(folder: Path, manifest_type) -> bool:
    """``folder`` holds a finished output of the stage ``manifest_type`` writes."""
    try:
        manifest_type.read(folder)
        return True
    except OfaserveError:
        return False


def main(argv: list[str] | None = None) -> int:
    global _screen
    _screen = sys.stdout
    args = build_parser().parse_args(argv)
    if args.budget_min < 0 or args.progress_s < 0:
        print("error: --budget_min and --progress_s must be >= 0", file=sys.stderr)
        return 2
    work = Path(args.workdir)
    redo = set(STAGES) if args.redo == "all" else {s for s in args.redo.split(",") if s}
    unknown = redo - set(STAGES)
    if unknown:
        print(f"error: --redo: unknown stage(s) {sorted(unknown)}; choose from {STAGES} or all", file=sys.stderr)
        return 2
    budget = Budget(args.budget_min * 60 or None, SHARES)  # the clock starts before paddle is imported
    configure()
    log_to_file(work / LOG_NAME)  # the stages' narration; the screen gets the demo's own lines
    _say(f"ofaserve demo: every stage's log goes to {work / LOG_NAME}")
    terminate_like_interrupt()  # SIGTERM unwinds like Ctrl-C, through the server's context manager
    try:
        with quiet.known_noise_silenced():
            with quiet.known_prints_dropped():
                import paddle  # noqa: F401  (its import prints a notice; the stages import it anyway)
            return _pipeline(args, work, redo, budget)
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
                **{k: r["latency_ms"][k] for k in ("n", "p50", "p90", "p99", "mean")},
                "throughput_sps": r.get("throughput_sps")}
    return {"triton_grpc": [row(r, concurrency=r["concurrency"]) for r in report.get("results", [])],
            "in_process": [row(b) for b in report.get("baselines", [])],
            "comparisons": report.get("comparisons", {})}


# --------------------------------------------------------------------------- screen
_screen = sys.stdout  # the demo's own lines; set when main() starts (a stage's reports may go to the log)


def _say(line: str) -> None:
    """One line on the screen, drawn above any progress bar (safe from the heartbeat thread)."""
    print_above_bars(line, _screen)


@contextlib.contextmanager
def _reports_to_log(work: Path):
    """A stage CLI's printed report (compress's table, the export's parity tables) into the
    demo's log: the screen gets the demo's one-line summary of it instead. Its warnings and
    errors (stderr) stay."""
    with open(work / LOG_NAME, "a") as log, contextlib.redirect_stdout(log):
        yield


def _with_latest(progress: str, width: int = 90) -> None:
    """A progress line, with what the stage logged last (its phase and step) after it."""
    latest = latest_log_line()
    if len(latest) > width:
        latest = latest[: width - 3] + "..."
    _say(f"{progress} | {latest}" if latest else progress)


class _Stage:
    """One line when a stage starts (with its share of the budget), progress lines while
    it runs, one line when it ends (with what it cut)."""

    def __init__(self, budget: Budget, name: str, title: str, every_s: float):
        self.budget, self.name, self.title, self.every_s = budget, name, title, every_s
        self.reused = False

    def __enter__(self) -> "_Stage":
        latest_log_line(forget=True)  # the previous stage's last line says nothing of this one
        allot = self.budget.start(self.name)
        share = "" if allot is None else f"  [{clock_text(allot)} of the {clock_text(self.budget.left())} left]"
        _say(f"\n=== {self.name}: {self.title}{share}")
        self.beat = Heartbeat(self.budget, self.name, self.every_s, _with_latest).__enter__()
        return self

    def __exit__(self, exc_type, *rest) -> None:
        self.beat.__exit__(exc_type, *rest)
        used = self.budget.finish(self.name, reused=self.reused)
        if exc_type is not None:
            return
        rec = self.budget.stages[self.name]
        of = "" if rec.allotted_s is None else f" of its {clock_text(rec.allotted_s)}"
        _say(f"=== {self.name}: {'reused' if self.reused else 'done'} in {clock_text(used)}{of}")
        for c in rec.cuts:
            _say(f"    cut: {c.what}: {c.default} -> {c.chosen} ({c.why})")


def _seconds(allot: float) -> str:
    """A stage's time budget as a flag value (a stage that starts late still gets a second)."""
    return str(max(1, round(allot)))


# --------------------------------------------------------------------------- stages
def _compress(args, work: Path, redo: set[str], budget: Budget) -> CompressManifest:
    from ofaserve.compress import cli as compress_cli

    compress_dir = work / "compress"
    allot = budget.allot("compress")
    argv = ["--profile", args.profile, "--output_dir", str(compress_dir), "--overwrite",
            *([] if allot is None else ["--time_budget_s", _seconds(allot)])]
    reuse = "compress" not in redo and _finished(compress_dir, CompressManifest)
    title = f"reusing {compress_dir} (--redo compress to retrain)" if reuse else "ofaserve compress " + " ".join(argv)
    with _Stage(budget, "compress", title, args.progress_s) as stage:
        stage.reused = reuse
        if not reuse:
            with _reports_to_log(work):  # its results table is printed once, at the end
                _run_stage("compress", compress_cli.main, argv)
            cm = CompressManifest.read(compress_dir)
            _say(cm.summary_line())
            _note_compress(budget, cm)
    return CompressManifest.read(compress_dir)


def _note_compress(budget: Budget, cm: CompressManifest) -> None:
    """The compress run's own measurements and cuts, in the demo's budget record."""
    for phase in ("teacher", "ofa"):
        train = cm.phases[phase].get("train") or {}
        budget.measure("compress", **{f"{phase}_sentences_per_s": train.get("sentences_per_s"),
                                      f"{phase}_steps": train.get("steps")})
    rec = cm.budget or {}
    budget.measure("compress", **rec.get("measured", {}))
    for c in rec.get("cuts", []):
        budget.cut("compress", c["what"], c["default"], c["chosen"], c["why"], c.get("at_floor", False))


def _served_only(budget: Budget) -> list[str]:
    """Under a budget the demo's exports build and check only what its cpu repository can
    serve; the cuts are recorded once for both exports."""
    if budget.total_s is None:
        return []
    flags = ["--parity_runtimes", ",".join(SERVED_PARITY_RUNTIMES), "--no_fp16", "--no_fuse_attention"]
    budget.cut("export", "parity runtimes", "all 7", "onnx, " + ", ".join(SERVED_PARITY_RUNTIMES),
               "the runtimes the demo's cpu repository serves; onnx carries the dev accuracy check")
    budget.cut("export", "FP16 variant and ONNX Runtime fused graph", "built and checked", "skipped",
               "only the gpu target / --runtime onnxruntime serve them")
    if capabilities.current().fast_int8:
        flags.append("--no_int8_plain")
        budget.cut("export", "INT8 IR of the plain graph", "built and gated", "skipped",
                   "the cpu repository's OpenVINO encoder serves the packed graph's INT8 IR")
    else:
        flags.append("--no_int8")
        budget.cut("export", "OpenVINO INT8 variant", "built and gated", "skipped",
                   f"this CPU has none of {', '.join(capabilities.INT8_FAST_FLAGS)}: INT8 runs slower than "
                   "f32 here, so `ofaserve repo --precision auto` would not serve it")
    return flags


def _exports(args, work: Path, redo: set[str], budget: Budget, cm: CompressManifest) -> dict[str, Path]:
    from ofaserve.export import cli as export_cli

    exports, widths = {}, ("1.0", args.width_mult)
    todo = [w for w in widths if "export" in redo or not _finished(work / "export" / f"w{w}", ExportManifest)]
    title = f"widths {', '.join(widths)}" + (f" (reusing {', '.join(w for w in widths if w not in todo)})"
                                             if len(todo) < len(widths) else "")
    with _Stage(budget, "export", title, args.progress_s) as stage:
        stage.reused = not todo
        served_only = _served_only(budget) if todo else []
        for width in widths:
            out = work / "export" / f"w{width}"
            exports[width] = out
            if width not in todo:
                _say(f"export {width}: reusing {out}")
                continue
            argv = ["--model_name_or_path", str(work / "compress"), "--width_mult", width, "--output_dir", str(out),
                    "--max_seq_length", str(max(args.seq_len, cm.max_seq_length)), "--overwrite", "--no_progress",
                    *served_only]
            if budget.total_s is not None:  # this export's part of what is left of the stage's share
                left = budget.stages["export"].allotted_s - budget.stage_elapsed("export")
                argv += ["--time_budget_s", _seconds(left / (len(todo) - todo.index(width)))]
            _say(f"export {width}: ofaserve export {' '.join(argv)}")
            with _reports_to_log(work):
                _run_stage(f"export {width}", export_cli.main, argv)
            manifest = ExportManifest.read(out)
            _say(manifest.summary_line())
            _note_export(budget, width, manifest)
    return exports


def _note_export(budget: Budget, width: str, manifest: ExportManifest) -> None:
    rec = manifest.parity.get("budget") or {}
    budget.measure("export", **{f"w{width}_wall_s": manifest.wall_s,
                                f"w{width}_dev_s_per_sentence": rec.get("s_per_sentence")})
    if "cut" in rec:
        budget.cut("export", f"w{width} dev sentences of the later checks (packed graph, precision gates)",
                   rec["dev_total"], rec["dev_sentences"], rec["cut"], rec.get("at_floor", False))


def _repo(args, work: Path, redo: set[str], budget: Budget, exports: dict[str, Path]) -> Path:
    from ofaserve.serve import cli as serve_cli

    repo = work / "model_repository"
    reuse = not ({"repo", "export"} & redo) and (repo / "manifest.json").is_file()
    argv = ["--export_dir", *map(str, exports.values()), "--target", "cpu", "--output", str(repo)]
    allot = budget.allot("repo")
    # a quarter of the share times the precision candidates (the timing still runs its
    # minimum rounds); loading them and writing the repository take the rest
    auto = None if allot is None else round(min(DEFAULT_AUTO_BUDGET_S, max(1.0, 0.25 * allot / len(exports))))
    if auto is not None:
        argv += ["--auto_budget_s", str(auto)]
    with _Stage(budget, "repo", f"reusing {repo}" if reuse else "ofaserve repo " + " ".join(argv),
                args.progress_s) as stage:
        stage.reused = reuse
        if not reuse:
            if auto is not None:
                budget.measure("repo", auto_budget_s=auto)
                if auto < DEFAULT_AUTO_BUDGET_S:
                    budget.cut("repo", "seconds timing the precision candidates per export",
                               DEFAULT_AUTO_BUDGET_S, auto, "a quarter of the stage's share (at least 5 rounds each)")
            _run_stage("repo", serve_cli.repo_main, argv)
    return repo


def _serve_and_bench(args, work: Path, budget: Budget, repo: Path, exports: dict[str, Path]) -> list[dict]:
    """Start the server, classify a few sentences, run the benchmark; the server stops after."""
    from ofaserve.serve.client import classify
    from ofaserve.serve.server import TritonServer, free_port

    grpc_port = args.grpc_port or free_port()
    names = {w: Width.parse(w).model_name("bert") for w in exports}
    with contextlib.ExitStack() as stack:
        with _Stage(budget, "serve", f"starting the bundled Triton server on {repo} (gRPC 127.0.0.1:{grpc_port}) "
                    "and classifying over gRPC", args.progress_s):
            server = stack.enter_context(TritonServer(repo, grpc_port=grpc_port, http_port=free_port(),
                                                      metrics_port=free_port()))
            _say(f"ready: gRPC {server.grpc_url}, models: {', '.join(sorted(server.models_ready()))}")
            compressed = names[args.width_mult]
            _say(f"classified by {compressed}:")
            answers = classify(SENTENCES, url=server.grpc_url, model=compressed)
            for text, ans in zip(SENTENCES, answers):
                probs = ", ".join(f"{k}={v:.3f}" for k, v in ans["probs"].items())
                _say(f"  {ans['label']:>8}  ({probs})  {text!r}")
        _bench(args, work, budget, server.grpc_url, repo, names)
    _say("server stopped")
    return answers


def bench_argv(args, work: Path, url: str, repo: Path, models: list[str], allot: float | None) -> list[str]:
    """The demo's `ofaserve bench` command line: both widths, batch 16, fixed and real text,
    concurrency 1, at most ``--requests`` per cell, sized to ``allot`` seconds."""
    return ["--url", url, "--model_repository", str(repo), "--models", ",".join(models),
            "--batch_size", "16", "--seq_len", str(args.seq_len), "--real_text", "--concurrency", "1",
            "--requests", str(args.requests), "--output_dir", str(work / "bench"),
            *([] if allot is None else ["--time_budget_s", _seconds(allot)])]


def _bench(args, work: Path, budget: Budget, url: str, repo: Path, names: dict[str, str]) -> None:
    from ofaserve.benchmarks import run as bench

    argv = bench_argv(args, work, url, repo, list(names.values()), budget.allot("bench"))
    with _Stage(budget, "bench", "ofaserve bench " + " ".join(argv), args.progress_s):
        _run_stage("bench", bench.main, argv)
        sizing = json.loads((work / "bench" / "report.json").read_text()).get("time_budget") or {}
        budget.measure("bench", **{k: sizing[k] for k in ("probe_latency_ms", "requests") if k in sizing})
        if "cut" in sizing:
            budget.cut("bench", "measured requests per model/workload", sizing["requests_asked"], sizing["requests"],
                       sizing["cut"], bool(sizing.get("at_floor")))


def _served_model(args, work: Path, redo: set[str]) -> tuple[dict, int]:
    """(config, max_seq_length) of the model the demo will serve: the finished compress
    run's, else what its compress stage will train (the pretrained model, the profile's
    sequence length)."""
    from ofaserve.compress import cli as compress_cli

    if "compress" not in redo and _finished(work / "compress", CompressManifest):
        cm = CompressManifest.read(work / "compress")
        return cm.model_config, int(cm.max_seq_length)
    opts = compress_cli.options_from_args(compress_cli.build_parser().parse_args(
        ["--profile", args.profile, "--output_dir", str(work / "compress")]))
    # the classifier head's size is nothing next to the encoder's: one label prices it
    return paddle_config(hf_config(resolve_model_path(opts.model_name_or_path)), num_labels=1), opts.max_seq_length


def bench_floor(args, work: Path, redo: set[str]) -> tuple[float, dict]:
    """(seconds the bench needs for ``MIN_REQUESTS`` per cell, or ``--requests`` if fewer; how
    that was priced). Priced before any model exists, so each request's latency is
    estimated: the model's FLOPs at the bench's shape (a width's FLOPs scale with it: every
    matmul of a layer is linear in its heads and FFN neurons) over this CPU's measured
    matmul speed in OpenVINO (``request_budget.matmul_gflops``). A real-text request is priced at the longest sequence the exports serve
    (the tokenizer truncates there), which bounds it from above."""
    from ofaserve.benchmarks import run as bench
    from ofaserve.benchmarks import request_budget

    names = {w: Width.parse(w).model_name("bert") for w in ("1.0", args.width_mult)}
    settings = bench.build_parser().parse_args(bench_argv(args, work, "", work, list(names.values()), None))
    config, max_seq_length = _served_model(args, work, redo)
    full = full_width_config(config)
    seq = {"fixed": settings.seq_len, "real": max(settings.seq_len, max_seq_length)}  # as _exports serves
    workloads = ([] if settings.no_fixed else ["fixed"]) + (["real"] if settings.real_text else [])
    gflops, precision = request_budget.matmul_gflops()
    latency = {(m, wl): float(w) * flops(full, settings.batch_size, seq[wl]) / gflops / 1e6
               for w, m in names.items() for wl in workloads}
    requests = min(request_budget.MIN_REQUESTS, settings.requests)
    floor = request_budget.floor_seconds(latency, requests=requests, concurrency_levels=len(settings.concurrency),
                                  rounds=settings.rounds, warmup=settings.warmup, baselines={k: 1 for k in latency})
    return floor, {"matmul_gflops": round(gflops, 1), "matmul_precision": precision, "requests_at_floor": requests,
                   "floor_s": round(floor, 1),
                   "estimated_latency_ms": {f"{m}/{wl}": round(v, 1) for (m, wl), v in latency.items()}}


# --------------------------------------------------------------------------- the whole run
def _pipeline(args, work: Path, redo: set[str], budget: Budget) -> int:
    if budget.total_s is not None:  # set aside before compress sizes itself: its share shrinks instead
        floor, priced = bench_floor(args, work, redo)
        budget.reserve("bench", floor)
        budget.measure("bench", floor=priced)
    cm = _compress(args, work, redo, budget)
    exports = _exports(args, work, redo, budget, cm)
    repo = _repo(args, work, redo, budget, exports)
    answers = _serve_and_bench(args, work, budget, repo, exports)
    bench_dir = work / "bench"
    report = json.loads((bench_dir / "report.json").read_text())
    print(f"\n=== Accuracy per width ({cm.task}, compress profile {args.profile})\n")
    print(cm.results_table())
    if warning := cm.learning_warning():
        print(warning)
    print("\n=== Latency (batch 16, gRPC, this machine)\n")
    print((bench_dir / "report.md").read_text())
    print(_budget_report(budget))
    timings = {f"{n}_s": round(r.used_s, 1) for n, r in budget.stages.items() if r.used_s is not None}
    summary = {
        "compress": {"dir": str(work / "compress"), "results": cm.results, "budget": cm.budget},
        "exports": {w: {"dir": str(p), "manifest": ExportManifest.read(p).to_dict()} for w, p in exports.items()},
        "model_repository": str(repo),
        "classified": [{"text": s, **a} for s, a in zip(SENTENCES, answers)],
        "benchmark": {"dir": str(bench_dir), "report": str(bench_dir / "report.json"),
                      "latency": latency_figures(report)},
        "timings": {**timings, "total_s": round(budget.elapsed(), 1)},
        "budget": budget.record(),
    }
    write_json(work / "summary.json", summary)
    print(f"\nArtifacts: compress {work / 'compress'} | exports {', '.join(map(str, exports.values()))} | "
          f"repository {repo} | benchmark {bench_dir} | summary {work / 'summary.json'}")
    return 0


def _budget_report(budget: Budget) -> str:
    """What the budget was, what each stage used, and everything that was cut."""
    if budget.total_s is None:
        return f"\n=== Time: {clock_text(budget.elapsed())} (no budget: nothing was cut)"
    over = budget.elapsed() - budget.total_s
    verdict = "within"
    if over > 0:
        late = [f"{n} by {clock_text(r.used_s - r.allotted_s)}" for n, r in budget.stages.items()
                if r.used_s is not None and r.allotted_s is not None and r.used_s > r.allotted_s and not r.reused]
        floors = [f"{c.stage} {c.what}" for c in budget.cuts() if c.at_floor]
        verdict = (f"OVER by {clock_text(over)}" + (f"; over their share: {', '.join(late)}" if late else "")
                   + (f"; kept at the minimum this machine needs longer for: {', '.join(floors)}" if floors else ""))
    lines = [f"\n=== Time budget {clock_text(budget.total_s)}: used {clock_text(budget.elapsed())} ({verdict})"]
    for name, r in budget.stages.items():
        if r.used_s is not None:
            lines.append(f"  {name:<9} {clock_text(r.used_s):>6} of {clock_text(r.allotted_s or 0):>6}"
                         f"{'  (reused)' if r.reused else ''}"
                         f"{f'  (at least {clock_text(r.reserve_s)} reserved)' if r.reserve_s else ''}")
    cuts = budget.cuts()
    lines.append("  cut to fit:" + ("" if cuts else " nothing"))
    lines += [f"    {c.line()}" for c in cuts]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
