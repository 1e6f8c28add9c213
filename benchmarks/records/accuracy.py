"""Record a compress run's accuracy per width in benchmarks/results/accuracy.json (+ .md).

    python -m benchmarks.records.accuracy --compress_dir runs/full/compress \
        --command "ofaserve compress --profile full --output_dir runs/full/compress"

Every figure is copied from the run's manifest (what `ofaserve compress` measured);
nothing is typed in.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import CompressManifest, read_manifest
from ofaserve.core.files import write_json


def accuracy_record(manifest: dict, command: str) -> dict:
    res = manifest["results"]

    def acc(r: dict) -> dict:
        return {split: r[split]["accuracy"] for split in ("dev", "test") if split in r}

    return {
        "teacher": acc(res["teacher"]),
        "widths": {w: acc(r) for w, r in res["widths"].items()},
        "test_vs_teacher_ci95": {w: r["test"]["vs_teacher"] for w, r in res["widths"].items() if "test" in r},
        "f1": {"teacher": {s: res["teacher"][s]["f1"] for s in res["teacher"]},
               **{w: {s: r[s]["f1"] for s in ("dev", "test") if s in r} for w, r in res["widths"].items()}},
        "majority_class": res.get("majority_class"),
        "task": manifest["task"], "splits": manifest["source"]["splits"],
        "train_sentences_used": manifest["source"]["train_sentences_used"],
        "options": manifest["options"],
        "phases": {p: {k: v for k, v in d.items() if k != "history"} for p, d in manifest["phases"].items()},
        "dev_history": manifest["phases"]["ofa"].get("history"),
        "dev_before_ofa": manifest["importance"].get("dev_before_ofa"),
        "command": command, "date": manifest["finished"], "machine": manifest["machine"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compress_dir", required=True, help="output folder of `ofaserve compress`")
    p.add_argument("--command", required=True, help="the exact command that produced it (recorded verbatim)")
    p.add_argument("--output", default="benchmarks/results/accuracy.json", help="where to write the record")
    args = p.parse_args(argv)
    try:
        manifest = read_manifest(args.compress_dir, stage="compress")
    except OfaserveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    record = accuracy_record(manifest, args.command)
    table = CompressManifest.from_dict(manifest).results_table()
    write_json(args.output, record)
    md = Path(args.output).with_suffix(".md")
    md.write_text(f"# Accuracy per width ({manifest['task']})\n\n{record['date']} on {record['machine']['cpu']} "
                  f"({record['machine']['cores']} cores)\n\n`{args.command}`\n\n{table}\n")
    print(table)
    print(f"\nwrote {args.output} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
