"""Measurements behind compress's choices, each written as a record for benchmarks/results/.

    python -m benchmarks.records.compress_measure scoring --compress_dir runs/demo/compress \\
        --output benchmarks/results/compress_eval.json
    python -m benchmarks.records.compress_measure teacher-lr --runs 5e-5:40 2e-4:40 \\
        --output benchmarks/results/teacher_learning_rate.json
    python -m benchmarks.records.compress_measure ofa-steps --teacher_steps 40 --steps 8 16 24 \\
        --workdir runs/ofa_steps --output benchmarks/results/ofa_steps.json

``scoring``: for the teacher and every width of a finished compress output, paddle
dygraph vs the scorer's Paddle Inference path (set-up: slice, write and load the static
model, probe check; then the passes) on the same dev and test sentences, with the
accuracy each gives and the largest logits difference. Interleaved per model, one
process, after a warm-up pass.

``ofa-steps``: ``ofaserve compress --profile quick`` with a teacher of TEACHER_STEPS
steps, then OFA phases of each of STEPS steps from that same teacher (``--teacher_dir``):
accuracy per width on dev and test, from each run's manifest. Runs already finished in
``--workdir`` with the same steps are read, not repeated.

``teacher-lr``: the quick profile's teacher fine-tune (its train subset, batch and
schedule, the training loop compress runs) for LEARNING_RATE:STEPS pairs, each from the
pretrained weights, scored on dev: how fast each rate learns when a budget cuts steps.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _load(compress_dir: Path):
    import paddle

    from ofaserve.compress.bert import build_classifier
    from ofaserve.compress.ofa import OfaSupernet
    from ofaserve.core.manifests import read_manifest

    m = read_manifest(compress_dir, stage="compress")
    teacher = build_classifier(m["model_config"])
    teacher.set_state_dict(paddle.load(str(compress_dir / m["checkpoints"]["teacher"])))
    teacher.eval()
    student = build_classifier(m["model_config"])
    supernet = OfaSupernet(student, m["width_mult_list"])
    supernet.load_plain_state_dict(paddle.load(str(compress_dir / m["checkpoints"]["supernet"])))
    supernet.eval()
    return m, teacher, supernet


def _timed_passes(fn, splits: dict, tokenizer) -> tuple[float, dict]:
    from ofaserve.core.batching import predict

    t0, logits = time.perf_counter(), {}
    for name, split in splits.items():
        logits[name] = predict(fn, split, tokenizer)
    return time.perf_counter() - t0, logits


def compare(compress_dir: Path) -> dict:
    from ofaserve.compress.evaluation import Scorer
    from ofaserve.compress.train import model_logits_fn, supernet_logits_fn
    from ofaserve.core.machine import machine_info
    from ofaserve.core.width import Width
    from ofaserve.core.manifests import CompressManifest
    from ofaserve.core.tokenizer import encode_batch, load_tokenizer

    m, teacher, supernet = _load(compress_dir)
    tokenizer = load_tokenizer(compress_dir / m["tokenizer"]["tokenizer_json"], m["max_seq_length"])
    typed = CompressManifest.from_dict(m)
    splits = {"dev": typed.split("dev"), "test": typed.split("test")}
    probe = encode_batch(tokenizer, splits["dev"].texts[:16])
    models = {"teacher": (model_logits_fn(teacher), lambda s: s.teacher(teacher))}
    for w in supernet.widths:
        models[Width(w).key] = (supernet_logits_fn(supernet, w), lambda s, w=w: s.width(supernet, w))
    _timed_passes(models["teacher"][0], {"dev": splits["dev"].take(slice(0, 64))}, tokenizer)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        scorer = Scorer(Path(scratch), probe)
        for key, (dygraph_fn, static_of) in models.items():
            dy_s, dy_logits = _timed_passes(dygraph_fn, splits, tokenizer)
            t0 = time.perf_counter()
            static_fn = static_of(scorer)
            setup_s = time.perf_counter() - t0
            st_s, st_logits = _timed_passes(static_fn, splits, tokenizer)
            rows[key] = {
                "dygraph_s": round(dy_s, 2), "static_setup_s": round(setup_s, 2), "static_passes_s": round(st_s, 2),
                "speedup_incl_setup": round(dy_s / (setup_s + st_s), 2),
                "max_abs_logits_diff": float(max(np.abs(dy_logits[s] - st_logits[s]).max() for s in splits)),
                "accuracy": {s: {"dygraph": float((dy_logits[s].argmax(-1) == splits[s].labels).mean()),
                                 "static": float((st_logits[s].argmax(-1) == splits[s].labels).mean())} for s in splits},
                "predictions_differing": int(sum((dy_logits[s].argmax(-1) != st_logits[s].argmax(-1)).sum()
                                                 for s in splits))}
        record = scorer.record()
        scorer.close()
    total_dy = sum(r["dygraph_s"] for r in rows.values())
    total_st = sum(r["static_setup_s"] + r["static_passes_s"] for r in rows.values())
    return {"what": "scoring the results table (teacher + every width, dev and test): paddle dygraph vs "
                    "the scorer's Paddle Inference path, same process, interleaved per model",
            "compress_dir": str(compress_dir), "sentences": {s: len(v) for s, v in splits.items()},
            "models": rows, "total_s": {"dygraph": round(total_dy, 1), "static_incl_setup": round(total_st, 1)},
            "scorer": record, "machine": machine_info()}


class _FixedSteps:
    """A ``finetune_teacher`` sizer that keeps the planned steps and drops the per-epoch
    dev evaluations: each run trains exactly its steps and keeps its last weights."""
    epoch_selection = False

    def __call__(self, step: int, stats, total: int) -> int:
        return total


def teacher_lr_sweep(runs: list[tuple[float, int]], seed: int = 42) -> dict:
    from ofaserve.compress.bert import load_pretrained_classifier, resolve_model_path
    from ofaserve.compress.evaluation import Scorer
    from ofaserve.compress.options import PROFILES, CompressOptions
    from ofaserve.compress.train import finetune_teacher
    from ofaserve.core.batching import predict
    from ofaserve.core.metrics import score
    from ofaserve.core.machine import machine_info
    from ofaserve.core.tasks import load_task
    from ofaserve.core.tokenizer import encode_batch, make_tokenizer

    quick = PROFILES["quick"]
    model_dir = resolve_model_path("minilm-l6")
    data = load_task("rt-polarity")
    train = data.split("train").take(slice(0, quick["max_train_samples"]))
    dev = data.split("dev")
    tokenizer = make_tokenizer(model_dir / "vocab.txt", lowercase=True, max_seq_length=quick["max_seq_length"])
    batch = CompressOptions.batch_size  # the batch compress trains with
    steps_per_epoch = -(-len(train) // batch)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scorer = Scorer(Path(scratch), encode_batch(tokenizer, dev.texts[:16]))
        for i, (lr, steps) in enumerate(runs):
            model, _ = load_pretrained_classifier(str(model_dir), len(data.labels), seed=seed)
            info, stats = finetune_teacher(model, train, dev, tokenizer, spec=data.spec, epochs=steps / steps_per_epoch,
                                           batch_size=batch, lr=lr, seed=seed, logging_steps=0, evaluate=None,
                                           progress=False, sizer=_FixedSteps())
            dev_metrics = score(data.spec, predict(scorer.teacher(model, version=i), dev, tokenizer), dev.labels)
            rows.append({"learning_rate": lr, "steps": info["steps"], "train_s": round(stats.seconds, 1),
                         "dev_accuracy": round(dev_metrics["accuracy"], 4), "dev_f1": round(dev_metrics["f1"], 4)})
            print(f"lr {lr:g}, {info['steps']} steps ({stats.seconds:.0f} s): dev accuracy "
                  f"{dev_metrics['accuracy']:.4f}", flush=True)
        scorer.close()
    majority = float(max(np.mean(dev.labels), 1 - np.mean(dev.labels)))
    return {"what": f"teacher fine-tune of the quick profile (2,000 train sentences, batch {batch}, AdamW with linear "
                    "warm-up 10% and decay over the run's steps, last weights) at each learning rate and step count",
            "model": "minilm-l6", "task": data.name, "dev_sentences": len(dev), "dev_majority_class": majority,
            "runs": rows, "machine": machine_info()}


def _steps_run(workdir: Path, teacher_steps: int, ofa_steps: int, teacher_dir: Path | None) -> dict:
    """One quick-profile compress run (or its finished output), as a record row."""
    from ofaserve.compress import cli as compress_cli
    from ofaserve.compress.options import PROFILES, CompressOptions
    from ofaserve.core.errors import OfaserveError
    from ofaserve.core.manifests import read_manifest

    quick = PROFILES["quick"]
    steps_per_epoch = -(-quick["max_train_samples"] // CompressOptions.batch_size)
    out = workdir / f"t{teacher_steps}_o{ofa_steps}"
    argv = ["--profile", "quick", "--num_train_epochs", f"{round(ofa_steps / steps_per_epoch, 3)}",
            "--output_dir", str(out), "--overwrite", "--no_progress",
            *(["--teacher_dir", str(teacher_dir)] if teacher_dir else
              ["--num_teacher_epochs", f"{round(teacher_steps / steps_per_epoch, 3)}"])]
    try:
        m = read_manifest(out, stage="compress")
    except OfaserveError:
        if compress_cli.main(argv):
            raise OfaserveError(f"ofaserve compress {' '.join(argv)} failed (its log is above)") from None
        m = read_manifest(out, stage="compress")
    got = (m["phases"]["teacher"]["steps"], m["phases"]["ofa"]["steps"])
    if got != (teacher_steps, ofa_steps):
        raise OfaserveError(f"{out} trained {got} (teacher, OFA) steps, not {(teacher_steps, ofa_steps)}: "
                            "remove it to rerun")
    r = m["results"]
    return {"command": "ofaserve compress " + " ".join(argv), "teacher_steps": got[0], "ofa_steps": got[1],
            "ofa_train": m["phases"]["ofa"].get("train"),
            "teacher": {s: round(r["teacher"][s]["accuracy"], 4) for s in ("dev", "test")},
            "widths": {w: {s: round(v[s]["accuracy"], 4) for s in ("dev", "test")} for w, v in r["widths"].items()}}


def ofa_steps_sweep(teacher_steps: int, steps: list[int], workdir: Path) -> dict:
    from ofaserve.core.machine import machine_info

    first = workdir / f"t{teacher_steps}_o{steps[0]}"
    rows = [_steps_run(workdir, teacher_steps, n, None if i == 0 else first) for i, n in enumerate(steps)]
    for row in rows:
        print(f"OFA {row['ofa_steps']} steps: dev " + ", ".join(f"{w} {v['dev']:.4f}" for w, v in row["widths"].items()),
              flush=True)
    return {"what": f"quick profile: one teacher of {teacher_steps} steps, then OFA phases of {steps} steps from it "
                    "(--teacher_dir): accuracy per width on dev and test from each run's manifest",
            "runs": rows, "machine": machine_info()}


def _run_spec(text: str) -> tuple[float, int]:
    try:
        lr, steps = text.split(":")
        return float(lr), int(steps)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LEARNING_RATE:STEPS, e.g. 2e-4:40") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.records.compress_measure", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    scoring = sub.add_parser("scoring", help="dygraph vs Paddle Inference scoring of a compress output")
    scoring.add_argument("--compress_dir", required=True, help="a finished `ofaserve compress` output folder")
    sweep = sub.add_parser("teacher-lr", help="quick-profile teacher fine-tunes at several learning rates and steps")
    sweep.add_argument("--runs", type=_run_spec, nargs="+", required=True, metavar="LR:STEPS",
                       help="learning rate and steps of each run, e.g. 5e-5:40 2e-4:40")
    ofa = sub.add_parser("ofa-steps", help="quick-profile OFA phases of several lengths from one teacher")
    ofa.add_argument("--teacher_steps", type=int, default=40, help="steps of the shared teacher (default: 40)")
    ofa.add_argument("--steps", type=int, nargs="+", required=True, help="OFA steps of each run, e.g. 8 16 24")
    ofa.add_argument("--workdir", default="runs/ofa_steps", help="where the runs go (default: runs/ofa_steps)")
    for sp in (scoring, sweep, ofa):
        sp.add_argument("--output", default=None, help="write the record here as JSON (default: print a summary only)")
    return p


def _print_scoring(rec: dict) -> None:
    for key, r in rec["models"].items():
        print(f"{key:>8}: dygraph {r['dygraph_s']:6.1f} s | static {r['static_setup_s']:4.1f} s set-up + "
              f"{r['static_passes_s']:5.1f} s ({r['speedup_incl_setup']}x) | max diff {r['max_abs_logits_diff']:.1e} "
              f"| differing predictions {r['predictions_differing']}")
    print(f"   total: dygraph {rec['total_s']['dygraph']} s, static {rec['total_s']['static_incl_setup']} s")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ofaserve.runtime.paddle_cpu import configure
    configure()
    from ofaserve.core.errors import OfaserveError
    from ofaserve.core.files import write_json
    from ofaserve.core.quiet import known_noise_silenced
    try:
        with known_noise_silenced():
            if args.what == "scoring":
                rec = compare(Path(args.compress_dir))
                _print_scoring(rec)
            elif args.what == "ofa-steps":
                rec = ofa_steps_sweep(args.teacher_steps, args.steps, Path(args.workdir))
            else:
                rec = teacher_lr_sweep(args.runs)
    except OfaserveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output:
        write_json(args.output, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
