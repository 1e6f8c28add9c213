"""`ofaserve bench`: batch-16 latency over Triton gRPC, full width vs compressed, one run.

Measures closed-loop latency of each model over gRPC at several concurrency levels,
Triton's own queue/compute statistics (deltas over the run), and an in-process baseline
(same model file and runtime, no server) so the serving overhead is a ratio. Models are
measured interleaved in rounds (ABBA order) so machine noise hits every model alike and
the full-vs-compressed ratios are trustworthy. Writes report.json, report.md and a PNG.

    python benchmarks/run.py --start_server --model_repository runs/demo/model_repository
    python benchmarks/run.py --url 127.0.0.1:8001 --models bert_w100,bert_w67 --real_text
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.benchmarks import headline, inprocess, request_budget, stats
from ofaserve.benchmarks.loadgen import Target, round_order, run_closed_loop, split_counts
from ofaserve.benchmarks.workloads import Workload, fixed_workload, real_text_workload
from ofaserve.core.errors import OfaserveError
from ofaserve.core.machine import machine_info
from ofaserve.core.manifests import now_iso
from ofaserve.core.files import write_json, write_text
from ofaserve.core.outputs import check_report_dir
from ofaserve.core.stage_cli import HelpFormatter
from ofaserve.core.manifests import CompressManifest, RepoManifest
from ofaserve.core.tasks import TaskType, load_task
from ofaserve.benchmarks.report import faster_sentence, render_markdown, render_plot
from ofaserve.benchmarks.server_queries import (check_models, connect, discover_models, handled, model_info,
                                               read_repo_manifest, real_text_encoder, repo_model,
                                               repository_index, settled_snapshot, short_error, versions)
from ofaserve.serve.addresses import DEFAULT_URL, add_port_arguments
from ofaserve.serve.server import TritonServer

PROG = "ofaserve bench"
REPORT_FILES = ("report.json", "report.md", "latency.png")  # what a run writes to --output_dir
SCHEMA_VERSION = 2  # 2: every ratio reads 'N.NNx faster' (>1: faster) and carries its interval


# --------------------------------------------------------------------------- CLI
def _int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return sorted(dict.fromkeys(vals))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="Batch latency of Triton models over gRPC (closed loop), full width vs compressed "
                    "side by side, with Triton's server-side statistics and an in-process baseline. "
                    "Writes report.json, report.md and latency.png to --output_dir.")
    _target_arguments(p.add_argument_group("target"))
    _workload_arguments(p.add_argument_group("workload"))
    _load_arguments(p.add_argument_group("load"))
    _baseline_arguments(p.add_argument_group("in-process baseline"))
    _headline_arguments(p.add_argument_group("headline (the tutorial's setting against ofaserve's default, one run)"))
    _output_arguments(p.add_argument_group("output"))
    return p


def _target_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--url", default=DEFAULT_URL,
                   help="gRPC address of a running Triton server (ignored with --start_server)")
    g.add_argument("--start_server", action="store_true",
                   help="start the bundled Triton server on --model_repository for this run and stop it after")
    g.add_argument("--model_repository", default=None,
                   help="the server's model repository folder: needed by --start_server; also enables the "
                        "in-process baselines (they load each {m}_encoder/1/ model file)")
    add_port_arguments(g, used=" for --start_server")
    g.add_argument("--models", default=None,
                   help="comma-separated export names (bert_w100,bert_w67): each has a {m}_encoder and an {m} "
                        "ensemble; default: every {m} with an {m}_encoder in the server's repository index")


def _workload_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--batch_size", type=int, default=16, help="sentences per request")
    g.add_argument("--seq_len", type=int, default=128,
                   help="token length of the fixed workload (seeded random ids sent to {m}_encoder)")
    g.add_argument("--real_text", action="store_true",
                   help="also send real dev sentences as text to the {m} ensemble (tokenized server-side, "
                        "padded to the batch's longest); gives the real-text vs fixed-length ratio")
    g.add_argument("--no_fixed", action="store_true", help="skip the fixed-length workload (needs --real_text)")
    g.add_argument("--task", default="rt-polarity",
                   help="bundled task whose dev split supplies the --real_text sentences (see --compress_dir)")
    g.add_argument("--compress_dir", default=None,
                   help="with --real_text or --headline: the task this `ofaserve compress` output ran on (a GLUE "
                        "task's or your own files, sentence pairs included), instead of --task: its dev inputs "
                        "are sent, and --headline scores both sides on its dev and test")
    g.add_argument("--vocab_size", type=int, default=None,
                   help="upper bound of the random token ids; unset: the smallest vocab_size in the "
                        "encoders' configs, else 100 (valid for any BERT vocab; ids do not change the cost)")


def _load_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8],
                   help="comma-separated concurrency levels (requests kept in flight), e.g. 1,2,4,8")
    g.add_argument("--requests", type=int, default=None,
                   help="measured requests per model/workload/concurrency (default 60 unless --duration)")
    g.add_argument("--duration", type=float, default=None,
                   help="seconds of measured load per model/workload/concurrency instead of --requests")
    g.add_argument("--time_budget_s", type=float, default=None,
                   help="about this many seconds for the whole run: a few probe requests per model and workload "
                        "price a request, and the measured requests (and in-process calls) per cell are cut to "
                        f"fit, never above --requests nor below {stats.MIN_RATIO_REQUESTS} (fewer give ratios that "
                        "mean nothing: the run overruns instead); report.json's time_budget records the sizing "
                        "[default: no budget]")
    g.add_argument("--warmup", type=int, default=3, help="unmeasured requests sent before each measured chunk")
    g.add_argument("--rounds", type=int, default=3,
                   help="split each measurement into this many chunks, interleaving models (ABBA) so drift "
                        "on a noisy machine affects all models alike")
    g.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout in seconds")
    g.add_argument("--seed", type=int, default=0, help="seed for the random token ids and the sentence order")


def _baseline_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--baseline_requests", type=int, default=None,
                   help="sequential in-process calls per model/workload/runtime (default: like --requests, "
                        "at most 60; 0 disables the baseline)")
    g.add_argument("--runtimes", default="",
                   help="extra in-process runtime[:precision[:threads]] variants of the same model files to "
                        "compare, e.g. 'openvino:bf16,onnxruntime'; 'auto' adds every precision candidate that "
                        "`ofaserve repo --precision auto` timed (fp32, bf16, int8 where they passed the export's "
                        "gate and exist on this CPU); the served runtime is always included")


def _headline_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--headline", action="store_true",
                   help="serve side by side the tutorial's setting (--tutorial_repository: the full model at fp32, "
                        "every batch of --batch_size padded to --seq_len, sent as token ids) and ofaserve's default "
                        "(--model_repository: the `export --width_mult auto` subnet at `repo --precision auto`, "
                        "the task's dev sentences or pairs as text, packed), at concurrency 1 in ABBA rounds; both "
                        "scored on the task's (--task or --compress_dir) dev and test through their servers. "
                        "Writes headline.json and "
                        "headline.md to --output_dir")
    g.add_argument("--tutorial_repository", default=None,
                   help="with --headline: the repository of the tutorial's side (`ofaserve repo --export_dir "
                        "<width 1.0 export> --precision fp32`)")
    g.add_argument("--tutorial_url", default=None,
                   help="with --headline and no --start_server: gRPC address of the server of "
                        "--tutorial_repository (--url serves --model_repository); with --start_server both are "
                        "started, the tutorial's on free ports")
    g.add_argument("--tutorial_model", default=None,
                   help="with --headline: the model of --tutorial_repository [default: its only one]; --models "
                        "names the default side's")


def _output_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--output_dir", default=None, help="report folder (default runs/bench/<timestamp>)")
    g.add_argument("--overwrite", action="store_true",
                   help="write the report into --output_dir even if it holds other files (never removes them; "
                        "by default only a new or empty folder, or one holding an earlier report, is written)")
    g.add_argument("--no_progress", action="store_true", help="hide the tqdm progress bar")


def fail(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


# --------------------------------------------------------------------------- machine load
def _load(sample_s: float = 0.0) -> dict[str, Any]:
    """Machine load at a moment: other work on a 2-core box skews every latency. The load
    average remembers the last minutes (in the demo: its own training and exports), so the
    warning reads the CPU time used during ``sample_s`` seconds while this client waits."""
    out: dict[str, Any] = {"time": now_iso()}
    try:
        out["loadavg_1m"], out["loadavg_5m"], _ = os.getloadavg()
    except OSError:
        pass
    if sample_s > 0:
        import psutil
        out["cpu_busy_percent"] = psutil.cpu_percent(interval=sample_s)
    return out


def _busy_warning(start: dict[str, Any], end: dict[str, Any]) -> str | None:
    cores = os.cpu_count() or 1
    busy = start.get("cpu_busy_percent")
    if busy is not None and busy > 50:
        return (f"the machine was busy before the run ({busy:.0f}% of {cores} cores in use while the client "
                "waited): other processes competed for the CPU; absolute latencies are inflated and ratios noisier")
    return None


# --------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """The checked settings of one bench run."""
    args: argparse.Namespace
    workloads: list[str]
    requests: int | None
    rounds: int
    repo: Path | None
    extra_specs: list
    out_dir: Path
    n_base: int
    repo_manifest: RepoManifest | None


def make_plan(args: argparse.Namespace) -> Plan:
    workloads = ([] if args.no_fixed else ["fixed"]) + (["real"] if args.real_text else [])
    if not workloads:
        raise OfaserveError("--no_fixed without --real_text leaves nothing to measure")
    if args.batch_size < 1 or args.seq_len < 1:
        raise OfaserveError("--batch_size and --seq_len must be >= 1")
    if args.requests is not None and args.duration is not None:
        raise OfaserveError("give --requests or --duration, not both")
    if args.requests is not None and args.requests < 1:
        raise OfaserveError("--requests must be >= 1")
    if args.duration is not None and args.duration <= 0:
        raise OfaserveError("--duration must be > 0")
    if args.time_budget_s is not None and (args.time_budget_s <= 0 or args.duration is not None):
        raise OfaserveError("--time_budget_s must be > 0 and sizes --requests: drop --duration")
    if args.warmup < 0 or args.rounds < 1:
        raise OfaserveError("--warmup must be >= 0 and --rounds >= 1")
    requests = args.requests if args.requests is not None else (None if args.duration else 60)
    rounds = min(args.rounds, requests) if requests else args.rounds
    repo = Path(args.model_repository).resolve() if args.model_repository else None
    if args.start_server and repo is None:
        raise OfaserveError("--start_server needs --model_repository DIR")
    if repo is not None and not repo.is_dir():
        raise OfaserveError(f"model repository {repo} does not exist or is not a folder")
    extra_specs = inprocess.parse_runtime_specs(args.runtimes)
    out_dir = Path(args.output_dir or Path("runs") / "bench" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    check_report_dir(out_dir, REPORT_FILES, overwrite=args.overwrite)
    n_base = args.baseline_requests if args.baseline_requests is not None else min(requests or 60, 60)
    return Plan(args, workloads, requests, rounds, repo, extra_specs, out_dir, n_base, read_repo_manifest(repo))


def open_server(stack: ExitStack, plan: Plan) -> tuple[str, Any]:
    """(gRPC url, client): the server at --url, or one started on the repository."""
    args, url = plan.args, plan.args.url
    if args.start_server:
        server = TritonServer(str(plan.repo), grpc_port=args.grpc_port, http_port=args.http_port,
                              metrics_port=args.metrics_port)
        print(f"{PROG}: starting Triton on {plan.repo} ...", file=sys.stderr)
        server.start(timeout=300)
        stack.callback(server.stop)
        url = server.grpc_url
    client = connect(url)
    stack.callback(client.close)
    return url, client


def discover(client, url: str, plan: Plan) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(models, full width first; what each serves), checked against the workloads."""
    args = plan.args
    index = repository_index(client, url)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else discover_models(index)
    if not models:
        raise OfaserveError(f"no {{m}}_encoder models in the repository of the server at {url} "
                            f"(models: {', '.join(sorted(index)) or 'none'})")
    check_models(client, index, models, plan.workloads)
    infos = {m: model_info(client, m, plan.repo, plan.repo_manifest) for m in models}
    too_long = {m: i["max_seq_length"] for m, i in infos.items()
                if "fixed" in plan.workloads and i["max_seq_length"] and args.seq_len > i["max_seq_length"]}
    if too_long:
        raise OfaserveError(f"--seq_len {args.seq_len} exceeds the max_seq_length of "
                            + ", ".join(f"{m} ({n})" for m, n in too_long.items())
                            + "; pass a --seq_len within it")
    # the full model first in tables and ABBA order
    models.sort(key=lambda m: (-(infos[m]["width"] or 0.0), -infos[m]["depth"], m))
    return models, {m: infos[m] for m in models}


def make_workloads(plan: Plan, infos: dict[str, dict[str, Any]]) -> dict[str, Workload]:
    """Identical inputs for every model."""
    args, wl = plan.args, {}
    if "fixed" in plan.workloads:
        vocab = args.vocab_size or min((v for v in (i["vocab_size"] for i in infos.values()) if v), default=100)
        if args.vocab_size and any(i["vocab_size"] and args.vocab_size > i["vocab_size"] for i in infos.values()):
            raise OfaserveError(f"--vocab_size {args.vocab_size} exceeds a model's vocabulary "
                                f"({min(i['vocab_size'] for i in infos.values() if i['vocab_size'])})")
        wl["fixed"] = fixed_workload(args.batch_size, args.seq_len, vocab, args.seed)
    if "real" in plan.workloads:
        if args.compress_dir:
            manifest = CompressManifest.read(args.compress_dir)
            dev, spec, source = manifest.split("dev"), manifest.spec, f"{manifest.task} dev ({args.compress_dir})"
        else:
            data = load_task(args.task)
            dev, spec, source = data.split("dev"), data.spec, f"{args.task} dev"
        wl["real"] = real_text_workload(dev, args.batch_size, args.seed, source=source,
                                        outputs=("SCORE",) if spec.type == TaskType.REGRESSION else ("LABEL", "PROBS"))
    return wl


def _softmax_after(runner, encode):
    def fn(b):
        logits = runner(*encode(b))
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    return fn


def make_baselines(client, plan: Plan, models: list[str], infos: dict, wl: dict[str, Workload]):
    """In-process runners of each served encoder (and of --runtimes variants), keyed by
    (model, workload, runtime label); notes say what could not be loaded."""
    fns: dict[tuple[str, str, str], dict[str, Any]] = {}
    notes: list[str] = []
    if plan.n_base <= 0:
        return fns, notes
    if plan.repo is None:
        return fns, ["no --model_repository: in-process baselines skipped"]
    for m in models:
        enc_cfg = client.get_model_config(f"{m}_encoder", as_json=True).get("config", {})
        served = inprocess.spec_from_config(enc_cfg)
        specs = [served] + [sp if sp.threads else inprocess.RuntimeSpec(sp.runtime, sp.precision, served.threads)
                            for sp in plan.extra_specs]
        if "auto" in [x.strip() for x in (plan.args.runtimes or "").split(",")]:
            specs += inprocess.auto_specs(repo_model(plan.repo_manifest, m), served.threads)
        encode = None
        if "real" in wl:
            try:
                encode = real_text_encoder(m, plan.repo)
            except Exception as e:
                notes.append(f"{m}: real-text in-process baseline skipped ({short_error(e)})")
        for spec in dict.fromkeys(specs):
            try:
                runner, how = inprocess.load_baseline_runner(plan.repo / f"{m}_encoder", spec,
                                                             infos[m]["encoder_parameters"], served=spec == served)
            except Exception as e:  # a variant that cannot load is reported, not fatal
                notes.append(f"{m} {spec.label}: not loadable in-process ({short_error(e)})")
                continue
            for wname in wl:
                if wname == "fixed":
                    fn = (lambda b, runner=runner: runner(b[0], b[1]))
                elif encode is not None:
                    fn = _softmax_after(runner, encode)
                else:
                    continue
                fns[(m, wname, spec.label)] = {"fn": fn, "served": spec == served, "loader": how, "res": []}
    return fns, notes


# --------------------------------------------------------------------------- measurement
class Measurement:
    """Rounds of ABBA-ordered chunks: per model and workload, the in-process chunk (server
    idle), then the served chunks at each concurrency, with Triton's statistics around each."""

    def __init__(self, client, url: str, plan: Plan, models: list[str], wl: dict[str, Workload],
                 baselines: dict):
        self.client, self.url, self.plan, self.models, self.wl = client, url, plan, models, wl
        self.baselines, self.bar = baselines, None  # a progress bar, set by the caller
        args = plan.args
        self.per_round = split_counts(plan.requests, plan.rounds) if plan.requests else None
        self.dur_round = args.duration / plan.rounds if args.duration else None
        self.base_round = split_counts(plan.n_base, plan.rounds) if plan.n_base > 0 else [0] * plan.rounds
        self.cells: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.warm = stats.Accounting()

    def total_units(self) -> int:
        a = self.plan.args
        return (len(self.models) * len(self.wl) * len(a.concurrency) * ((self.plan.requests or 0)
                                                                        + self.plan.rounds * a.warmup)
                + sum(self.base_round) * len(self.baselines))

    def run(self) -> float:
        t0 = time.perf_counter()
        for r in range(self.plan.rounds):
            for m in round_order(self.models, r):
                for wname, w in self.wl.items():
                    self._in_process(m, wname, w, r)
                    target = Target(m, w, f"{m}_encoder" if wname == "fixed" else m)
                    for c in self.plan.args.concurrency:
                        self._served(target, wname, c, r)
        return time.perf_counter() - t0

    @property
    def tick(self):
        return (lambda: self.bar.update(1)) if self.bar is not None else None

    def _note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def _in_process(self, m: str, wname: str, w: Workload, r: int) -> None:
        n = self.base_round[r]
        for (bm, bw, label), b in self.baselines.items():
            if bm == m and bw == wname and n:
                b["fn"](w.batch(0))  # warm this runner after other models ran
                self._note(f"{m} {wname} in-process {label}")
                b["res"].append(inprocess.time_runner(b["fn"], w.batches, n, start_index=sum(self.base_round[:r])))
                if self.bar is not None:
                    self.bar.update(n)

    def _served(self, target: Target, wname: str, c: int, r: int) -> None:
        args, client, name = self.plan.args, self.client, target.infer_model
        self._note(f"{target.model} {wname} c={c} round {r + 1}/{self.plan.rounds}")
        before = settled_snapshot(client, name)
        if args.warmup:
            wres = run_closed_loop(self.url, target, c, n_requests=args.warmup, timeout_s=args.timeout,
                                   on_done=self.tick)
            self.warm = self.warm.merge(wres.accounting)
            before = settled_snapshot(client, name, handled(before, name) + wres.accounting.sent)
        res = run_closed_loop(self.url, target, c, n_requests=self.per_round[r] if self.per_round else None,
                              duration_s=self.dur_round, timeout_s=args.timeout,
                              start_index=sum(self.per_round[:r]) if self.per_round else 0, on_done=self.tick)
        after = settled_snapshot(client, name, handled(before, name) + res.accounting.sent)
        cell = self.cells.setdefault((target.model, wname, c), {"chunks": [], "server": {}})
        cell["chunks"].append(res)
        stats.add_deltas(cell["server"], stats.stats_delta(before, after))


# --------------------------------------------------------------------------- report
def served_results(cells: dict, infos: dict, models: list[str], workloads: list[str]) -> list[dict[str, Any]]:
    results = []
    for (m, wname, c), cell in cells.items():
        chunks = cell["chunks"]
        acc = stats.Accounting()
        for ch in chunks:
            acc = acc.merge(ch.accounting)
        lat = [x for ch in chunks for x in ch.latencies_ms]
        wall = sum(ch.wall_s for ch in chunks)
        sentences = sum(ch.sentences_ok for ch in chunks)
        relevant = [infos[m]["encoder"]] if wname == "fixed" else [m] + [x for x in infos[m]["composing"] if x]
        server_side = {name: stats.server_side_summary(cell["server"].get(name, {})) for name in relevant}
        steps = relevant if wname == "fixed" else (relevant[1:] or relevant)
        results.append({
            "model": m, "workload": wname, "concurrency": c,
            "infer_model": f"{m}_encoder" if wname == "fixed" else m,
            "runtime": infos[m]["runtime_label"],
            "latency_ms": stats.summarize_latencies(lat),
            "wall_s": wall, "chunk_wall_s": [ch.wall_s for ch in chunks],
            "sentences_ok": sentences,
            "throughput_sps": stats.throughput(sentences, wall),
            "requests_per_s": stats.throughput(acc.ok, wall),
            "accounting": acc.to_dict(),
            "wall_consistent": stats.check_wall_consistency(lat, wall, c),
            "server_side": server_side,
            "server_pipeline": stats.pipeline_totals(server_side, steps),
            "server_counters": {name: cell["server"].get(name, {}) for name in relevant},
            "latencies_ms": lat,
        })
    results.sort(key=lambda r: (workloads.index(r["workload"]), r["concurrency"], models.index(r["model"])))
    return results


def baseline_results(baselines: dict, batch_size: int) -> list[dict[str, Any]]:
    out = []
    for (m, wname, label), b in baselines.items():
        lat = [x for res in b["res"] for x in res.latencies_ms]
        wall = sum(res.wall_s for res in b["res"])
        out.append({"model": m, "workload": wname, "runtime": label, "served_runtime": b["served"],
                    "loader": b["loader"].get("loader"), "latency_ms": stats.summarize_latencies(lat),
                    "wall_s": wall, "throughput_sps": stats.throughput(len(lat) * batch_size, wall),
                    "latencies_ms": lat})
    return out


def run(args: argparse.Namespace, argv: list[str]) -> int:
    clock = request_budget.BenchClock(args.time_budget_s) if args.time_budget_s else None
    plan = make_plan(args)
    with ExitStack() as stack:
        url, client = open_server(stack, plan)
        models, infos = discover(client, url, plan)
        try:
            meta = client.get_server_metadata(as_json=True)
        except Exception:
            meta = {}
        wl = make_workloads(plan, infos)
        baselines, baseline_notes = make_baselines(client, plan, models, infos, wl)
        sizing = None
        if clock is not None:
            plan, sizing = request_budget.fit_plan(plan, clock, url, models, wl, baselines)
            if "cut" in sizing:
                print(f"{PROG}: time budget: {sizing['cut']}", file=sys.stderr)
        measurement = Measurement(client, url, plan, models, wl, baselines)
        if not args.no_progress:
            from tqdm import tqdm
            measurement.bar = tqdm(total=measurement.total_units() if plan.requests else None, unit="req",
                                   desc="bench", file=sys.stderr, dynamic_ncols=True,
                                   disable=None)  # None: no bar when stderr is not a terminal
            stack.callback(measurement.bar.close)
        load_start = _load(sample_s=request_budget.CPU_SAMPLE_S)
        run_wall = measurement.run()
        load_end = _load()
        if measurement.bar is not None:
            measurement.bar.close()
        results = served_results(measurement.cells, infos, models, list(wl))
        baselines_out = baseline_results(baselines, args.batch_size)
        report = {
            "schema_version": SCHEMA_VERSION,
            "date": now_iso(),
            "command": " ".join([PROG, *(shlex.quote(a) for a in argv)]),
            "argv": list(argv),
            "invocation": {"argv": list(sys.argv), "cwd": os.getcwd()},
            "machine": {**machine_info(), "load_start": load_start,
                        "load_end": load_end, "busy_warning": _busy_warning(load_start, load_end)},
            "versions": versions(meta.get("version")),
            "server": {"url": url, "started_by_bench": bool(args.start_server), "version": meta.get("version"),
                       "model_repository": str(plan.repo) if plan.repo else None},
            "settings": {"batch_size": args.batch_size, "seq_len": args.seq_len, "concurrency": args.concurrency,
                         "requests": plan.requests, "duration_s": args.duration, "warmup": args.warmup,
                         "rounds": plan.rounds, "seed": args.seed, "timeout_s": args.timeout,
                         "baseline_requests": plan.n_base, "workloads": list(wl), "runtimes": args.runtimes},
            "workloads": {k: v.info for k, v in wl.items()},
            "models": infos,
            "results": results,
            "baselines": baselines_out,
            "baseline_notes": baseline_notes,
            "comparisons": stats.compare(results, baselines_out, {m: infos[m]["width"] for m in models},
                                         depths={m: infos[m]["depth"] for m in models}),
            "warmup_accounting": measurement.warm.to_dict(),
            "totals": _totals(results, measurement.warm),
            "run_wall_s": run_wall,
            "time_budget": sizing,
            "plot": "latency.png",
        }
        write_report(report, plan.out_dir)
    return exit_code(report, plan.out_dir)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    render_plot(report, out_dir / "latency.png")
    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", render_markdown(report))


def exit_code(report: dict[str, Any], out_dir: Path) -> int:
    print(f"{PROG}: wrote {out_dir}/report.md, report.json, latency.png", file=sys.stderr)
    _print_summary(report)
    tot = report["totals"]
    if not tot["balanced"]:
        print(f"{PROG}: error: request ledger does not balance: {tot}", file=sys.stderr)
        return 1
    if tot["errors"]:
        print(f"{PROG}: {tot['errors']} of {tot['sent']} measured requests failed: {tot['errors_by_kind']}",
              file=sys.stderr)
        return 1
    return 0


def _totals(results: list[dict[str, Any]], warm: stats.Accounting) -> dict[str, Any]:
    sent = sum(r["accounting"]["sent"] for r in results)
    ok = sum(r["accounting"]["ok"] for r in results)
    errors = sum(r["accounting"]["errors"] for r in results)
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r["accounting"]["errors_by_kind"].items():
            kinds[k] = kinds.get(k, 0) + v
    return {"sent": sent, "ok": ok, "errors": errors, "errors_by_kind": kinds,
            "balanced": sent == ok + errors and all(r["accounting"]["balanced"] for r in results) and warm.balanced,
            "warmup_sent": warm.sent}


def _print_summary(report: dict[str, Any]) -> None:
    """The run's ratios, one line each, in the report's one convention (N.NNx faster)."""

    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    cmp_ = report["comparisons"]
    for s in cmp_["speedup"]:
        if s.get("concurrency") in (1, None):
            where = f"in-process {s['runtime']}" if s.get("in_process") else f"triton c={s['concurrency']}"
            print(f"  [{s['workload']}, {where}] p50 {f(s['model_ms'])} vs {f(s['full_ms'])} ms: "
                  + faster_sentence(s, "faster_than_full_x", s["model"], s["full_model"]))
    for o in cmp_["serving_overhead"]:
        print(f"  serving overhead {o['model']} [{o['workload']}, {o['runtime']}] p50 {f(o['in_process_ms'])} vs "
              f"{f(o['triton_ms'])} ms: " + faster_sentence(o, "in_process_faster_x", "in-process", "Triton gRPC"))
    for x in cmp_["real_vs_fixed"]:
        if x["concurrency"] == min(report["settings"]["concurrency"]):
            print(f"  {x['model']} c={x['concurrency']} p50 {f(x['real_ms'])} vs {f(x['fixed_ms'])} ms: "
                  + faster_sentence(x, "real_faster_x", "real text", f"fixed seq {report['settings']['seq_len']}"))
    few = [e["fewest_requests"] for e in stats.ratio_entries(cmp_) if e.get("few_requests")]
    if few:
        print(f"{PROG}: warning: {len(few)} ratio(s) from fewer than {stats.MIN_RATIO_REQUESTS} measured requests "
              f"in a cell (fewest {min(few)}): marked in report.md, not measurements", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.headline:
            return headline.run(args, argv)
        return run(args, argv)
    except OfaserveError as e:
        return fail(str(e))
    except Exception as e:  # a server that dies or misbehaves mid-run: one line, not a traceback
        from tritonclient.utils import InferenceServerException
        if isinstance(e, InferenceServerException):
            return fail(f"Triton server error: {short_error(e)}")
        raise
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
