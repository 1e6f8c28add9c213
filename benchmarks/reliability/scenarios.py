"""The scenarios `python -m ofaserve.benchmarks.reliability` runs, each composed of the helpers of
probes, traffic, faults and export_faults; each returns the dict recorded in the report."""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Iterable

from ofaserve.core.manifests import ExportManifest, read_manifest

from ofaserve.benchmarks.reliability.export_faults import EXPORT_PHASES, export_ok, describe_export, interrupt_export, run_export
from ofaserve.benchmarks.reliability.faults import (ServeCLI, busy_port_attempts, cli_killed, free_ports, port_race, server_kill_under_cli,
                     stub_kill_triton, stub_kill_under_load)
from ofaserve.benchmarks.reliability.memory import memory_growth_check
from ofaserve.benchmarks.reliability.overload import lone_instance_copy, overload_run
from ofaserve.benchmarks.reliability.oversized import oversized_check
from ofaserve.benchmarks.reliability.probes import rss_by_process, shm_usage, stubs_of
from ofaserve.benchmarks.reliability.traffic import (LOAD_BOUNDS, answers, bad_input_cases, case_references, dev_sentences, load_checks,
                      mixed_traffic, run_load, shm_growth_sweep)
from ofaserve.serve.repository import build_repository
from ofaserve.serve.server import TritonServer


def scenario_load_and_bad_input(export: Path, kind: str, work: Path, args) -> dict[str, Any]:
    tag = kind.split()[0]  # short name for paths and log lines; ``kind`` describes the model
    repo = work / f"repo_{tag}"
    manifest = build_repository([export], repo, target="cpu")
    (model,) = manifest.models
    info = manifest.models[model]
    texts = dev_sentences()
    out: dict[str, Any] = {"model": describe_export(export, kind), "served_name": model,
                           "repository": {k: getattr(manifest, k) for k in ("target", "runtime", "precision",
                                                                   "max_batch_size", "encoder_instances",
                                                                   "encoder_threads")}}
    p = free_ports()
    with TritonServer(repo, grpc_port=p["grpc"], http_port=p["http"], metrics_port=p["metrics"]) as srv:
        shm_idle = shm_usage(s["shm"] for s in stubs_of(srv.process.pid))
        out["shm_idle"] = {s["instance"]: shm_idle.get(s["shm"]) for s in stubs_of(srv.process.pid)}
        print(f"[{tag}] load: {args.requests} requests x {args.batch_size} sentences, concurrency {args.concurrency}",
              flush=True)
        out["load"] = run_load(srv.grpc_url, model, srv.process.pid, texts, args.requests, args.concurrency,
                               batch_size=args.batch_size)
        out["load"]["bounds"] = LOAD_BOUNDS
        out["load"]["checks"] = load_checks(out["load"])
        print(f"[{tag}]   {json.dumps({k: out['load'][k] for k in ('sent', 'ok', 'errors', 'wall_s')})} "
              f"memory {out['load']['memory']['rss_after_warmup_mib']:.0f} -> {out['load']['memory']['rss_end_mib']:.0f} MiB",
              flush=True)
        shm_loaded = shm_usage(s["shm"] for s in stubs_of(srv.process.pid))
        out["shm_after_load"] = {s["instance"]: shm_loaded.get(s["shm"]) for s in stubs_of(srv.process.pid)}

        print(f"[{tag}] /dev/shm growth with payload size", flush=True)
        out["shm_growth"] = shm_growth_sweep(srv.grpc_url, model, srv.process.pid)
        good_batches = [texts[i:i + 4] for i in range(0, 64, 4)]
        reference = answers(srv.grpc_url, model, good_batches)
        cases = bad_input_cases(manifest.max_batch_size, info.max_seq_length, ExportManifest.read(export).vocab_size,
                                info.text_limits.max_text_bytes)
        case_ref = case_references(srv.grpc_url, model, cases)
        print(f"[{tag}] bad input concurrent with good traffic", flush=True)
        mixed = mixed_traffic(srv.grpc_url, model, good_batches, reference, cases, case_ref,
                              good_rounds=args.good_rounds, bad_rounds=args.bad_rounds)
        mixed["models_ready_after"] = all(srv.models_ready().values())
        out["bad_input"] = mixed
        shm_end = shm_usage(s["shm"] for s in stubs_of(srv.process.pid))
        out["shm_after_bad_input"] = {s["instance"]: shm_end.get(s["shm"]) for s in stubs_of(srv.process.pid)}
        out["rss_end_mib"] = rss_by_process(srv.process.pid)
    return out


def scenario_memory_growth(export: Path, kind: str, work: Path, args) -> dict[str, Any]:
    """The memory-growth check and its leaking control (reliability.memory) on one export."""
    tag = kind.split()[0]
    repo = work / f"repo_memory_{tag}"
    # fp32 pinned: memory growth does not depend on the precision, and precision auto would
    # time every candidate first
    (model,) = build_repository([export], repo, target="cpu", precision="fp32").models
    print(f"[{tag}] memory growth: {args.memory_requests} requests x {args.batch_size} sentences, concurrency "
          f"{args.concurrency}, on the repository and on a copy with a leaking encoder (the control)", flush=True)
    r = memory_growth_check(repo, model, dev_sentences(), work, n_requests=args.memory_requests,
                            concurrency=args.concurrency, batch_size=args.batch_size)
    print(f"[{tag}]   growth after warm-up {r['normal']['growth_mib']:+.1f} MiB, control "
          f"{r['control']['growth_mib']:+.1f} MiB, limit {r['limit_mib']:.0f} MiB: {'PASS' if r['ok'] else 'FAIL'}",
          flush=True)
    return {"model": describe_export(export, kind), "served_name": model, **r}


def scenario_overload(export: Path, kind: str, work: Path, args) -> list[dict[str, Any]]:
    """Per text pipeline, first the control: the repository with Triton's unbounded queue and
    one instance (``--max_queue_size 0``, what ``ofaserve repo`` wrote before it had a queue
    policy) under open-loop traffic at ``args.overload_factor`` x its capacity; then the same
    rate on the repository with the queue policy ``ofaserve repo`` writes (reliability.overload),
    which must pass its checks while the control's accepted p99 exceeds their bound."""
    tag = kind.split()[0]
    runs = []
    for pipeline in args.overload_pipelines.split(","):
        control = _overload_on(export, work / f"repo_overload_{tag}_{pipeline}_control", pipeline, args,
                               max_queue_size=0, instances=1)
        print(f"[{tag}]   control (unbounded queue, one instance): {_overload_line(control)}", flush=True)
        if "error" in control:
            runs.append({**control, "model": describe_export(export, kind)})
            continue
        rate = control["open_loop"]["rate_per_s"]
        repo = work / f"repo_overload_{tag}_{pipeline}"
        r = _overload_on(export, repo, pipeline, args, max_queue_size=args.overload_max_queue_size,
                         instances=args.overload_instances, rate_per_s=rate)
        r["model"] = describe_export(export, kind)
        if "error" not in r:
            exceeded = (r["accepted_check_ms"] is not None
                        and (control["accepted_latency_ms"]["p99"] or 0) > r["accepted_check_ms"])
            r["control"] = {**control, "exceeded_check": exceeded}
            r["checks"]["control_exceeds_the_bound"] = exceeded
            r["ok"] = all(r["checks"].values())
            if args.overload_lone_instance:  # why two instances: the same policy with one, same rate
                lone = _overload_on(export, repo, pipeline, args, max_queue_size=args.overload_max_queue_size,
                                    instances=args.overload_instances, rate_per_s=rate,
                                    serve_from=lone_instance_copy(repo, work / f"{repo.name}_lone"))
                r["lone_instance"] = lone
                print(f"[{tag}]   lone-instance copy (queue policy, one instance): {_overload_line(lone)}", flush=True)
        print(f"[{tag}]   {_overload_line(r)}", flush=True)
        runs.append(r)
    return runs


def _overload_on(export: Path, repo: Path, pipeline: str, args, *, max_queue_size: int | None,
                 instances: int | None, rate_per_s: float | None = None,
                 serve_from: Path | None = None) -> dict[str, Any]:
    """One overload run on a repository of ``export`` built at ``repo`` (or, with
    ``serve_from``, already built there and served from that copy of it)."""
    if serve_from is None:
        # fp32 pinned: the queues do not depend on the precision, and auto would time candidates first
        build_repository([export], repo, target="cpu", precision="fp32", text_pipeline=pipeline,
                         max_queue_size=max_queue_size, instances=instances)
    served = serve_from or repo
    manifest = read_manifest(served, stage="repo")
    (model,) = manifest["models"]
    queue = manifest["queue_policy"]
    instances_served = _encoder_instances(served, model)
    print(f"overload ({pipeline}): {f'{rate_per_s:.0f} requests/s' if rate_per_s else f'{args.overload_factor}x capacity'}"
          f" for {args.overload_seconds} s, {args.batch_size} sentences per request, queue {queue['max_queue_size']}, "
          f"{instances_served} encoder instances", flush=True)
    p = free_ports()
    with TritonServer(served, grpc_port=p["grpc"], http_port=p["http"], metrics_port=p["metrics"]) as srv:
        r = overload_run(srv.grpc_url, model, dev_sentences(), batch_size=args.batch_size,
                         max_batch_size=manifest["max_batch_size"], max_queue_size=queue["max_queue_size"],
                         instances=instances_served, queue_timeout_ms=queue["queue_timeout_ms"],
                         factor=args.overload_factor, duration_s=args.overload_seconds, rate_per_s=rate_per_s)
    r.update({"served_name": model, "text_pipeline": pipeline,
              "repository": {**{k: manifest[k] for k in ("target", "runtime", "precision", "max_batch_size",
                                                         "encoder_threads", "queue_policy")},
                             "encoder_instances": instances_served}})
    return r


def _encoder_instances(repo: Path, model: str) -> int:
    """Instances of the model that encodes (the fused model or the encoder), as served."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc
    config = text_format.Parse((repo / f"{model}_encoder" / "config.pbtxt").read_text(), mc.ModelConfig())
    return sum(g.count for g in config.instance_group)


def _overload_line(r: dict[str, Any]) -> str:
    if "error" in r:
        return r["error"]
    return (f"capacity {r['capacity']['per_s']:.0f} req/s; open loop {r['open_loop']['counts']}; accepted p99 "
            f"{r['accepted_latency_ms']['p99']:.0f} ms (check {_ms(r['accepted_check_ms'])}): "
            f"{'PASS' if r.get('ok') else 'FAIL'}")


def _ms(v: float | None) -> str:
    return "none" if v is None else f"{v:.0f} ms"


def scenario_oversized(export: Path, kind: str, work: Path, args) -> dict[str, Any]:
    """A flood of requests far over the text limits, on the defaults and without limits (reliability.oversized)."""
    tag = kind.split()[0]
    print(f"[{tag}] oversized: {args.oversized_requests} requests of {args.oversized_mib} MiB of text, on the "
          "default limits and on a copy without them", flush=True)
    r = oversized_check(export, work, dev_sentences(64), n_requests=args.oversized_requests,
                        request_mib=args.oversized_mib)
    for label, run in r["runs"].items():
        print(f"[{tag}]   {label}: RSS {run['idle']['rss_total_mib']:.0f} -> {run['after']['rss_total_mib']:.0f} MiB, "
              f"/dev/shm {run['idle']['shm_total_mib']:.0f} -> {run['after']['shm_total_mib']:.0f} MiB", flush=True)
    return {"model": describe_export(export, kind), **r}


def scenario_faults(export: Path, work: Path) -> dict[str, Any]:
    repo = work / "repo_faults"
    manifest = build_repository([export], repo, target="cpu")
    (model,) = manifest.models
    texts = dev_sentences(64)
    batches = [texts[i:i + 4] for i in range(0, 64, 4)]
    out: dict[str, Any] = {}
    print("[faults] SIGKILL encoder stub under load: Triton alone", flush=True)
    out["encoder_stub_killed_triton"] = stub_kill_triton(repo, model, batches, observe_s=20)
    print("[faults] SIGKILL encoder stub under load: `ofaserve serve`", flush=True)
    out["encoder_stub_killed_under_load"] = stub_kill_under_load(repo, model, batches, observe_s=20, poll=2.0)
    print("[faults] SIGKILL tritonserver under `ofaserve serve`", flush=True)
    out["tritonserver_killed"] = server_kill_under_cli(repo, poll=2.0)
    print("[faults] second `ofaserve serve` on busy ports", flush=True)
    first = ServeCLI(repo, free_ports())
    try:
        first.start()
        out["busy_port"] = busy_port_attempts(repo, first)
    finally:
        first.kill()
    print("[faults] port taken after the launcher's check (race)", flush=True)
    out["port_race"] = port_race(repo)
    print("[faults] SIGKILL `ofaserve serve` itself", flush=True)
    out["cli_sigkilled"] = cli_killed(repo)
    return out


def scenario_export(compress_dir: Path, work: Path) -> dict[str, Any]:
    out_dir = work / "exports" / "w075"
    first = run_export(compress_dir, out_dir, 0.75)
    result: dict[str, Any] = {"compress_dir": str(compress_dir), "first_export": first, "interrupts": []}
    points = [(signal.SIGINT, phase, delay) for phase in EXPORT_PHASES for delay in (0.05, 0.3, 0.6)]
    points += [(signal.SIGTERM, EXPORT_PHASES[1], 0.05), (signal.SIGTERM, EXPORT_PHASES[2], 0.3)]
    for sig, phase, delay in points:
        print(f"[export] {signal.Signals(sig).name} {delay} s after '{phase}'", flush=True)
        result["interrupts"].append(interrupt_export(compress_dir, out_dir, 0.75, sig=sig, delay_s=delay,
                                                     after_line=phase))
    result["next_run"] = run_export(compress_dir, out_dir, 0.75)
    result["next_run"]["export_loads"] = export_ok(out_dir)
    return result


def scenario_shm_fresh(export: Path, work: Path, sizes_mb: Iterable[float] = (1, 4, 16)) -> list[dict[str, Any]]:
    """Per payload size, on a FRESH server: the regions after one request of that size."""
    repo = work / "repo_shm"
    (model,) = build_repository([export], repo, target="cpu").models
    rows = []
    for mb in sizes_mb:
        p = free_ports()
        with TritonServer(repo, grpc_port=p["grpc"], http_port=p["http"], metrics_port=p["metrics"]) as srv:
            rows += shm_growth_sweep(srv.grpc_url, model, srv.process.pid, [mb])
    return rows


def shm_per_instance(results: dict[str, Any]) -> dict[str, Any]:
    sizes = []
    for r in results.get("models", []):
        for key in ("shm_idle", "shm_after_load", "shm_after_bad_input"):
            sizes += [v["size"] for v in r.get(key, {}).values() if v]
    return {"per_instance_max_bytes": max(sizes, default=None), "per_instance_min_bytes": min(sizes, default=None),
            "note": "python backend 2.51 defaults: shm-default-byte-size 1 MiB, shm-growth-byte-size 1 MiB; a region "
                    "grows by the growth size when a request/response does not fit"}
