"""Record a width x depth compress run's grid on one CPU in benchmarks/results/width_depth.json
(+ .md): each subnet's test metric against the teacher's (with its interval, from the compress
manifest) next to its served latency at 16 x 128 fp32 and its speedup over the full model,
all subnets measured in one interleaved `ofaserve bench` run.

    python -m benchmarks.records.width_depth --compress_dir runs/full/compress \\
        --work_dir runs/width_depth --output benchmarks/results/width_depth.json

It runs the stages as a user does, each as its own process: `ofaserve export` per subnet
(fp32 artifacts only: --no_precisions), one `ofaserve repo --precision fp32` over all of
them, one `ofaserve bench --start_server` on the fixed 16 x 128 workload at concurrency 1
(ABBA rounds over every model). An export already in --work_dir for the same supernet
checkpoint and subnet is reused. Accuracy figures are copied from the compress manifest and
latency figures from the bench report; nothing is typed in.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import write_json
from ofaserve.core.machine import describe as describe_machine
from ofaserve.core.manifests import CompressManifest, now_iso, read_manifest
from ofaserve.core.subnet import Subnet, results_by_subnet

BENCH_WORKLOAD = "fixed"
BENCH_CONCURRENCY = 1


def _ofaserve(args: list[str]) -> None:
    """One stage as its own process, as a user runs it; its error line ends the record."""
    cmd = [sys.executable, "-m", "ofaserve", *args]
    print("$ " + " ".join(shlex.quote(a) for a in ["ofaserve", *args]), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=sys.stderr)
    if done.returncode:
        raise OfaserveError(f"`ofaserve {args[0]}` exited {done.returncode}")


def subnets_of(manifest: dict, only: list[str] | None) -> list[Subnet]:
    """The compress run's subnets (``only``: those keys), the full model first and always in."""
    grid = CompressManifest.from_dict(manifest).subnets()
    if only:
        known = {s.key: s for s in grid}
        missing = [k for k in only if k not in known]
        if missing:
            raise OfaserveError(f"--subnets {', '.join(missing)}: not trained (the run has {', '.join(known)})")
        grid = [s for s in grid if s.key in only or s == grid[0]]
    return grid


def export_folder(work: Path, sub: Subnet) -> Path:
    return work / "export" / sub.key


def _reusable(folder: Path, sub: Subnet, sha256: str) -> bool:
    try:
        m = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (m.get("source") or {}).get("sha256") == sha256 and m.get("subnet", m.get("width")) == sub.key


def run_stages(compress_dir: Path, work: Path, subnets: list[Subnet], manifest: dict, requests: int,
               rounds: int, seq_len: int) -> Path:
    """Exports, repository and one bench run; returns the bench's report.json."""
    sha = manifest["checkpoint_sha256"]["supernet"]
    exports = []
    for sub in subnets:
        folder = export_folder(work, sub)
        if not _reusable(folder, sub, sha):
            _ofaserve(["export", "--model_name_or_path", str(compress_dir), "--width_mult", sub.width.key,
                       "--depth_mult", sub.depth.key, "--max_seq_length", str(seq_len), "--no_precisions",
                       "--no_progress", "--output_dir", str(folder)])
        exports.append(str(folder))
    repo, bench = work / "repo", work / "bench"
    _ofaserve(["repo", "--export_dir", *exports, "--output", str(repo), "--precision", "fp32"])
    from ofaserve.serve.server import free_port

    _ofaserve(["bench", "--start_server", "--model_repository", str(repo), "--concurrency", str(BENCH_CONCURRENCY),
               "--requests", str(requests), "--rounds", str(rounds), "--seq_len", str(seq_len),
               "--baseline_requests", "0", "--grpc_port", str(free_port()), "--http_port", str(free_port()),
               "--metrics_port", str(free_port()), "--no_progress", "--output_dir", str(bench)])
    return bench / "report.json"


def grid_record(manifest: dict, report: dict, subnets: list[Subnet], command: str) -> dict[str, Any]:
    """Each subnet's accuracy (compress manifest) and served latency (bench report), by subnet."""
    res, metric = manifest["results"], manifest["results"].get("metric", "accuracy")
    split = res.get("report_split", "test")
    by_key = {sub.key: r for sub, r in results_by_subnet(res)}
    models = {Subnet.of(i["width"], i.get("depth") or 1.0).key: m for m, i in report["models"].items()
              if i.get("width") is not None}
    p50 = {r["model"]: r["latency_ms"]["p50"] for r in report["results"]
           if r["workload"] == BENCH_WORKLOAD and r["concurrency"] == BENCH_CONCURRENCY}
    speedup = {s["model"]: s for s in report["comparisons"]["speedup"]
               if s["workload"] == BENCH_WORKLOAD and s.get("concurrency") == BENCH_CONCURRENCY
               and not s.get("in_process")}
    layers = int(manifest["model_config"]["num_hidden_layers"])
    teacher = res["teacher"][split][metric]
    served = served_key(report["settings"])
    configs = []
    for sub in subnets:
        if sub.key not in models:
            raise OfaserveError(f"the bench report has no model for {sub.describe()}")
        model, r = models[sub.key], by_key[sub.key]
        vs = r[split]["vs_teacher"]
        s = speedup.get(model)
        configs.append({
            "subnet": sub.key, "model": model, "width_mult": sub.width.value, "depth_mult": sub.depth.value,
            "layers": sub.depth.layers(layers), f"dev_{metric}": r["dev"][metric],
            f"{split}_{metric}": r[split][metric], f"teacher_{split}_{metric}": teacher,
            f"{split}_{metric}_minus_teacher": {"diff": vs["diff"], "ci95": vs["ci95"]},
            served: p50[model],
            "speedup_vs_full_fp32": (None if s is None else {k: s[k] for k in ("faster_than_full_x", "ci95",
                                                                               "few_requests", "fewest_requests")}),
        })
    return {
        "what": "one CPU: every (width, depth) of one compress run, its report-split metric against the "
                "teacher's (95% paired-bootstrap interval) and its served latency, batch 16 x 128 fp32 over gRPC at "
                "concurrency 1, all measured in one interleaved bench run",
        "command": command, "date": now_iso(), "machine": report["machine"],
        "task": manifest["task"], "metric": metric, "report_split": split, f"teacher_{split}_{metric}": teacher,
        "compress": {"options": manifest["options"], "finished": manifest.get("finished"),
                     "machine": manifest["machine"], "supernet_sha256": manifest["checkpoint_sha256"]["supernet"]},
        "bench": {"command": report["command"], "date": report["date"], "settings": report["settings"],
                  "busy_warning": report["machine"].get("busy_warning"), "versions": report.get("versions")},
        "configs": configs,
    }


def served_key(settings: dict[str, Any]) -> str:
    """The latency field's name, from the bench's settings: ``served_16x128_fp32_p50_ms``."""
    return f"served_{settings['batch_size']}x{settings['seq_len']}_fp32_p50_ms"


def render(record: dict[str, Any]) -> str:
    metric, split = record["metric"], record["report_split"]
    served = served_key(record["bench"]["settings"])
    shape = served.split("_")[1]
    rows = [f"| width | depth (layers) | {split} {metric} | - teacher (95% CI) | p50 {shape} fp32 ms | faster than full |",
            "|---|---|---|---|---|---|"]
    for c in record["configs"]:
        vs, s = c[f"{split}_{metric}_minus_teacher"], c["speedup_vs_full_fp32"]
        faster = "reference" if s is None else (f"{s['faster_than_full_x']:.2f}x" + (
            f" [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]" if s.get("ci95") else "")
            + (" (few requests)" if s.get("few_requests") else ""))
        rows.append(f"| {c['width_mult']:.4g} | {c['depth_mult']:.4g} ({len(c['layers'])}) | {c[f'{split}_{metric}']:.4f} "
                    f"| {vs['diff']:+.4f} [{vs['ci95'][0]:+.4f}, {vs['ci95'][1]:+.4f}] | "
                    f"{c[served]:.1f} | {faster} |")
    return "\n".join([f"# Width x depth grid ({record['task']})", "",
                      f"{record['date']} on {describe_machine(record['machine'])}", "", f"`{record['command']}`", "",
                      f"teacher {split} {metric}: {record[f'teacher_{split}_{metric}']:.4f}", "", *rows, ""])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compress_dir", required=True, help="output folder of an `ofaserve compress` with depths")
    p.add_argument("--work_dir", required=True, help="where the exports, the repository and the bench report go")
    p.add_argument("--output", default="benchmarks/results/width_depth.json", help="where the record goes (+ .md)")
    p.add_argument("--subnets", default=None,
                   help="comma-separated subnet keys to measure, e.g. 1.0,0.5_d0.5 (the full model always) "
                        "[default: every trained one]")
    p.add_argument("--requests", type=int, default=60, help="measured requests per model in the bench run")
    p.add_argument("--rounds", type=int, default=3, help="ABBA rounds of the bench run")
    p.add_argument("--seq_len", type=int, default=128, help="sequence length of the bench's fixed workload")
    args = p.parse_args(argv)
    command = " ".join(["python -m benchmarks.records.width_depth", *(shlex.quote(a) for a in argv)])
    try:
        manifest = read_manifest(args.compress_dir, stage="compress")
        subnets = subnets_of(manifest, [k.strip() for k in args.subnets.split(",")] if args.subnets else None)
        if len(subnets) < 2:
            raise OfaserveError("one subnet leaves nothing to compare: the run trained only the full model")
        report_path = run_stages(Path(args.compress_dir), Path(args.work_dir), subnets, manifest, args.requests,
                                 args.rounds, args.seq_len)
        record = grid_record(manifest, json.loads(report_path.read_text()), subnets, command)
    except OfaserveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json(args.output, record)
    md = Path(args.output).with_suffix(".md")
    md.write_text(render(record))
    print(render(record))
    print(f"wrote {args.output} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
