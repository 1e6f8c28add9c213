"""One task end to end, as a user runs it: ``ofaserve compress`` on a task's files, ``ofaserve
export`` of chosen widths, ``ofaserve repo``, the task's metric through the served models
(``served_accuracy``) and ``ofaserve bench`` on the task's own dev inputs, full width against
compressed side by side. Writes one record (JSON and Markdown) for benchmarks/results/.

    python -m benchmarks.records.task_run --task_name MRPC --data_dir DATA/MRPC \\
        --source "GLUE MRPC in GLUE's TSV layout from github.com/OWNER/REPO@COMMIT glue_data/MRPC" \\
        --workdir runs/task_mrpc --output benchmarks/results/task_mrpc.json

Each stage's output stays in ``--workdir``; a stage whose output is already there and finished
is read, not repeated (``--redo STAGE`` repeats it), so the timed bench can run later on a quiet
machine than the training. Every stage's command line and wall time are in the record.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from ofaserve.core.files import write_json, write_text
from ofaserve.core.machine import machine_info
from ofaserve.core.manifests import CompressManifest, ExportManifest, RepoManifest, now_iso
from ofaserve.core.width import Width
from ofaserve.runtime import capabilities
from ofaserve.serve.server import free_port

STAGES = ("compress", "export", "repo", "served", "bench")
COMMANDS = "commands.json"  # each stage's command line and wall time, kept across reruns


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_name", required=True, help="a GLUE task name (ofaserve compress --task_name)")
    p.add_argument("--data_dir", required=True, help="the task's GLUE files (train.tsv, dev.tsv)")
    p.add_argument("--source", required=True, help="where the data came from, written into the record")
    p.add_argument("--workdir", required=True, help="folder for every stage's output (made if missing)")
    p.add_argument("--output", required=True, help="the record: OUTPUT (JSON) and OUTPUT with .md")
    p.add_argument("--model_name_or_path", default="minilm-l6", help="the model compress starts from")
    p.add_argument("--profile", default="quick", choices=("quick", "full"), help="compress profile")
    p.add_argument("--max_seq_length", type=int, default=128, help="compress --max_seq_length")
    p.add_argument("--compress_flag", action="append", default=[], metavar="FLAG=VALUE",
                   help="another compress flag, e.g. --compress_flag=--max_train_samples=3000 (repeatable)")
    p.add_argument("--export_flag", action="append", default=[], metavar="FLAG[=VALUE]",
                   help="another export flag for every width, e.g. --export_flag=--no_int8 (repeatable)")
    p.add_argument("--widths", nargs="+", default=["1.0", "0.6667"], help="widths to export and serve")
    p.add_argument("--precision", default="fp32", help="ofaserve repo --precision (fp32: the served metric "
                   "is comparable with the export's FP32 dev score)")
    p.add_argument("--requests", type=int, default=200, help="bench --requests (per model and concurrency)")
    p.add_argument("--concurrency", default="1,4", help="bench --concurrency")
    p.add_argument("--stop_after", choices=STAGES, help="run the stages up to this one, then stop (no record)")
    p.add_argument("--note", default="", help="what else the record should say (e.g. other load on the machine)")
    p.add_argument("--redo", action="append", default=[], choices=STAGES, help="repeat this stage (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    commands = _read_json(work / COMMANDS) or {}
    exports = {w: work / "export" / f"w{Width(float(w)).key}" for w in args.widths}
    stages = {"compress": _compress_stage, "export": _export_stage, "repo": _repo_stage,
              "served": _served_stage, "bench": _bench_stage}
    for name, run in stages.items():
        run(args, work, exports, commands)
        if args.stop_after == name:
            return 0
    record = assemble(args, work, commands, exports, _served_models(work))
    write_json(args.output, record)
    write_text(Path(args.output).with_suffix(".md"), render(record))
    print(render(record))
    return 0


OFASERVE = [sys.executable, "-m", "ofaserve"]


def _compress_stage(args, work: Path, exports: dict[str, Path], commands: dict) -> None:
    _stage(commands, work, "compress",
           [*OFASERVE, "compress", "--task_name", args.task_name, "--data_dir", args.data_dir,
            "--model_name_or_path", args.model_name_or_path, "--profile", args.profile,
            "--max_seq_length", str(args.max_seq_length), *_flags(args.compress_flag),
            "--output_dir", str(work / "compress"), "--overwrite"],
           done=_finished(CompressManifest, work / "compress"), redo="compress" in args.redo)


def _export_stage(args, work: Path, exports: dict[str, Path], commands: dict) -> None:
    for w, out in exports.items():
        _stage(commands, work, f"export {w}",
               [*OFASERVE, "export", "--model_name_or_path", str(work / "compress"), "--width_mult", w,
                "--output_dir", str(out), "--overwrite", *_flags(args.export_flag)],
               done=_finished(ExportManifest, out), redo="export" in args.redo)


def _repo_stage(args, work: Path, exports: dict[str, Path], commands: dict) -> None:
    repo = work / "model_repository"
    _stage(commands, work, "repo",
           [*OFASERVE, "repo", "--export_dir", *map(str, exports.values()), "--target", "cpu",
            "--precision", args.precision, "--output", str(repo), "--overwrite"],
           done=_finished(RepoManifest, repo), redo="repo" in args.redo)


def _served_models(work: Path) -> dict[str, str]:
    """export folder name -> the text model the repository serves it as."""
    return {m.source_export: name for name, m in RepoManifest.read(work / "model_repository").models.items()}


def _served_stage(args, work: Path, exports: dict[str, Path], commands: dict) -> None:
    models = _served_models(work)
    for w, out in exports.items():
        name = _model_of(models, out)
        record = work / f"served_{name}.json"
        _stage(commands, work, f"served {w}",
               [sys.executable, "-m", "benchmarks.records.served_accuracy",
                "--model_repository", str(work / "model_repository"), "--export_dir", str(out), "--model", name,
                "--output", str(record)],
               done=record.is_file(), redo="served" in args.redo)


def _bench_stage(args, work: Path, exports: dict[str, Path], commands: dict) -> None:
    models = _served_models(work)
    _stage(commands, work, "bench",
           [sys.executable, "benchmarks/run.py", "--start_server", "--model_repository", str(work / "model_repository"),
            "--grpc_port", str(free_port()), "--http_port", str(free_port()), "--metrics_port", str(free_port()),
            "--models", ",".join(_model_of(models, out) for out in exports.values()),
            "--real_text", "--no_fixed", "--compress_dir", str(work / "compress"), "--requests", str(args.requests),
            "--concurrency", args.concurrency, "--output_dir", str(work / "bench"), "--no_progress"],
           done=(work / "bench" / "report.json").is_file(), redo="bench" in args.redo)


def _flags(pairs: list[str]) -> list[str]:
    """``--flag=value`` -> ``--flag value``; a bare ``--flag`` stays."""
    out = []
    for p in pairs:
        out += p.split("=", 1)
    return out


def _finished(manifest_type, folder: Path) -> bool:
    try:
        return manifest_type.read(folder).finished is not None
    except Exception:  # missing, partial or another stage's folder: run the stage
        return False


def _model_of(models: dict[str, str], export_dir: Path) -> str:
    for source, name in models.items():  # the repository names each model's export folder
        if source == export_dir.name:
            return name
    raise SystemExit(f"the repository serves no model built from {export_dir}")


def _stage(commands: dict, work: Path, name: str, argv: list[str], *, done: bool, redo: bool) -> None:
    if done and not redo:
        print(f"== {name}: reusing its output ({commands.get(name, {}).get('command', 'made earlier')})",
              file=sys.stderr)
        return
    shown = " ".join(["python" if a == sys.executable else a for a in argv])
    print(f"== {name}: {shown}", file=sys.stderr)
    start = time.monotonic()
    code = subprocess.call(argv)
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}): {shown}")
    commands[name] = {"command": shown, "wall_s": round(time.monotonic() - start, 1), "date": now_iso(),
                      "machine": machine_info()}
    write_json(work / COMMANDS, commands)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _files(data_dir: str) -> dict:
    """sha256 and row count of each file of the task folder the run read."""
    out = {}
    read = ("train.tsv", "dev.tsv", "dev_matched.tsv", "dev_mismatched.tsv")  # what load_task reads of GLUE's
    for f in sorted(p for p in Path(data_dir).glob("*.tsv") if p.name in read):
        data = f.read_bytes()
        out[f.name] = {"sha256": hashlib.sha256(data).hexdigest(), "lines": data.count(b"\n")}
    return out


def assemble(args, work: Path, commands: dict, exports: dict[str, Path], models: dict[str, str]) -> dict:
    cm = CompressManifest.read(work / "compress")
    served = {w: _read_json(work / f"served_{_model_of(models, out)}.json") for w, out in exports.items()}
    bench = _read_json(work / "bench" / "report.json")
    metric = cm.spec.main_metric
    return {
        "what": f"{cm.spec.name} end to end: compress ({args.profile} profile) -> export -> Triton -> gRPC, "
                "the task's metric per width and served, bench latency on the task's dev inputs",
        "task": cm.spec.to_dict(), "data_source": args.source, "data_files": _files(args.data_dir),
        "rows": {s: len(cm.split(s)) for s in ("train", "dev") if cm.has_split(s)},
        "profile": args.profile, "metric": metric, **({"note": args.note} if args.note else {}),
        "compress": {"results": cm.results, "options": cm.options, "phases": cm.phases,
                     "table": cm.results_table()},
        "exports": {w: {"dev_score": (m := ExportManifest.read(out)).dev_score, "params": m.params,
                        "parity_max_abs_diff": m.parity.get("max_abs_diff")} for w, out in exports.items()},
        "served": {w: {"model": r["model"], "served_dev": r["served_dev"],
                       "export_manifest_dev_score": r["export_manifest_dev_score"],
                       "served_equals_export": abs(r["served_dev"][metric] - r["export_manifest_dev_score"]["value"])
                       <= 1e-6 if r["export_manifest_dev_score"].get("value") is not None else None,
                       **{k: v for k, v in r.items() if k.startswith(("max_abs_", "predictions_differing"))}}
                   for w, r in served.items()},
        "bench": {"settings": bench["settings"], "results": bench["results"],
                  "speedup": bench["comparisons"].get("speedup", []), "machine": bench.get("machine")},
        "commands": commands, "date": now_iso(), "machine": machine_info(),
        "cpu_capabilities": capabilities.current().describe(),
        "command": " ".join(["python -m benchmarks.records.task_run", *sys.argv[1:]]),
    }


def render(record: dict) -> str:
    """The record as Markdown: the metric table, served vs export, the bench's p50s and ratios."""
    metric = record["metric"]
    cpu = f"{record['machine'].get('cpu') or 'unknown CPU'} ({record['cpu_capabilities']})"
    out = [f"# {record['task']['name']}: compress -> export -> served -> bench ({record['profile']} profile)", "",
           f"- data: {record['data_source']}; rows {record['rows']}",
           f"- machine: {cpu}; date {record['date']}", f"- command: `{record['command']}`",
           *([f"- note: {record['note']}"] if record.get("note") else []), "",
           "## Dev metric per width (teacher = the model compress started from, fine-tuned on the task)", "",
           record["compress"]["table"], "", f"## Served over gRPC vs the export's dev {metric}", "",
           f"| width | model | served dev {metric} | export dev {metric} | equal | max abs diff vs ONNX |",
           "|---|---|---|---|---|---|"]
    for w, s in record["served"].items():
        diff = next((v for k, v in s.items() if k.startswith("max_abs_") and k.endswith("_vs_onnx")), None)
        exp = s["export_manifest_dev_score"].get("value")
        out.append(f"| {w} | {s['model']} | {s['served_dev'][metric]:.4f} | "
                   f"{'n/a' if exp is None else f'{exp:.4f}'} | {s['served_equals_export']} | "
                   f"{'n/a' if diff is None else f'{diff:.1e}'} |")
    out += ["", "## Bench: batch of 16 of the task's dev inputs over gRPC", "",
            "| model | workload | concurrency | p50 ms | p90 ms | p99 ms | sentences/s |", "|---|---|---|---|---|---|---|"]
    for r in record["bench"]["results"]:
        lat = r["latency_ms"]
        out.append(f"| {r['model']} | {r['workload']} | {r['concurrency']} | {lat['p50']:.1f} | {lat['p90']:.1f} | "
                   f"{lat['p99']:.1f} | {r.get('throughput_sps') or 0:.1f} |")
    ratios = [s for s in record["bench"]["speedup"] if s.get("faster_than_full_x")]
    if ratios:
        out += ["", "| model | workload | where | faster than full (p50, 95% CI) |", "|---|---|---|---|"]
        for s in ratios:
            ci = s.get("ci95") or [float("nan")] * 2
            where = f"in-process {s['runtime']}" if s.get("runtime") else f"Triton gRPC, concurrency {s['concurrency']}"
            out.append(f"| {s['model']} | {s['workload']} | {where} | "
                       f"{s['faster_than_full_x']:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}] |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
