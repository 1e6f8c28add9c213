"""``compress_model``: teacher fine-tune -> importance reorder -> OFA training -> results.

Output folder (read by ``ofaserve export`` through its manifest):
    manifest.json                 what was made, from what, with which settings + results
    teacher/model_state.pdparams  the fine-tuned full model (distillation teacher)
    supernet/model_state.pdparams full-width weights, heads/neurons sorted by importance,
                                  OFA-trained: width w = the first w of every layer
    tokenizer/vocab.txt, tokenizer/tokenizer.json
Work in progress lives in ``<output>.partial/`` (for --resume); the final folder is
swapped in atomically, so an interrupted run never damages a previous good output.
"""
from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.artifacts import (OfaserveError, atomic_output_dir, check_output_dir, machine_info, now_iso,
                        read_manifest, sha256_file, write_json, write_manifest)
from ofaserve.compress import distributed as dist
from ofaserve.compress.ofa import DEFAULT_WIDTHS, width_key

log = logging.getLogger("ofaserve.compress")

PROFILES: dict[str, dict[str, Any]] = {
    # ~10 min on 2 CPU cores: a subset, short sequences, one OFA epoch.
    "quick": dict(max_train_samples=2000, num_teacher_epochs=2, num_train_epochs=1, max_seq_length=64,
                  importance_samples=256, save_steps=0, eval_before_ofa=False),
    # all train sentences (~10k); <= 90 min on 2 CPU cores. The recipe of the recorded
    # run 4 (benchmarks/results/accuracy.md): of four full runs, 3 OFA epochs with a
    # gold-label term kept width 0.6667 closest to the teacher (test gap: 2 epochs -1.66
    # points, 3 epochs -0.90, 2 epochs + gold-label term -0.83, 3 epochs + term -0.30).
    "full": dict(max_train_samples=None, num_teacher_epochs=2, num_train_epochs=3, max_seq_length=64,
                 importance_samples=1024, save_steps=106, eval_before_ofa=True, lambda_ce=0.5),
}


@dataclass
class CompressOptions:
    output_dir: str
    model_type: str = "bert"
    model_name_or_path: str = "minilm-l6"
    task_name: str = "rt-polarity"
    train_file: str | None = None
    dev_file: str | None = None
    test_file: str | None = None
    width_mult_list: list[float] = field(default_factory=lambda: list(DEFAULT_WIDTHS))
    max_seq_length: int = 64
    batch_size: int = 32
    learning_rate: float = 3e-5
    teacher_learning_rate: float = 5e-5
    num_train_epochs: float = 1
    num_teacher_epochs: float = 2
    max_train_samples: int | None = None
    importance_samples: int = 1024
    lambda_hidden: float = 0.1
    lambda_logit: float = 1.0
    lambda_ce: float = 0.0
    sampling: str = "all"
    logging_steps: int = 20
    save_steps: int = 0
    eval_before_ofa: bool = False
    seed: int = 42
    teacher_dir: str | None = None
    select_width: float | None = None
    n_gpu: int = 1
    resume: bool = False
    overwrite: bool = False
    profile: str | None = None
    progress: bool = True


def _reusable_teacher(opts: CompressOptions) -> dict:
    """The fine-tuned teacher of an earlier compress output (``--teacher_dir``), checked to
    come from the same model and data, with its checksum verified."""
    folder = opts.teacher_dir
    manifest = read_manifest(folder, stage="compress")
    ckpt = Path(folder) / manifest["checkpoints"]["teacher"]
    if not ckpt.is_file():
        raise OfaserveError(f"--teacher_dir {folder}: {ckpt} is missing; re-run the compress stage that made it")
    theirs = manifest["options"]
    same = [("model_name_or_path", manifest["source"]["model"], str(opts.model_name_or_path)),
            ("train_file", theirs.get("train_file"), opts.train_file)]
    if not opts.train_file:  # a registered task: its name says which data
        same.append(("task_name", manifest.get("task"), opts.task_name))
    differ = [f"{k} {a!r} vs {b!r}" for k, a, b in same if a != b]
    if differ:
        raise OfaserveError(f"--teacher_dir {folder} was trained on other inputs ({'; '.join(differ)}, theirs vs "
                            "this run's): pass a compress output of the same model and data")
    sha = sha256_file(ckpt)
    if sha != manifest["checkpoint_sha256"]["teacher"]:
        raise OfaserveError(f"--teacher_dir {folder}: {ckpt} does not match its manifest checksum (corrupted?)")
    info = {**manifest["phases"]["teacher"],
            "reused_from": {"dir": str(Path(folder).resolve()), "sha256": sha, "created": manifest.get("created")}}
    return {"checkpoint": ckpt, "info": info}


def _seed_everything(seed: int) -> None:
    import paddle
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


def _save_params(state: dict, path: Path) -> None:
    import paddle
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    paddle.save(state, str(tmp))
    tmp.replace(path)


def _load_params(path: Path) -> dict:
    import paddle
    try:
        return paddle.load(str(path))
    except Exception as e:
        raise OfaserveError(f"cannot load checkpoint {path}: {e} (corrupted? delete it or rerun without --resume)") from e


def compress_model(opts: CompressOptions) -> dict:
    """Run the whole compress stage; returns the manifest written to ``opts.output_dir``."""
    import paddle

    from ofaserve.compress.bert import load_pretrained_classifier, resolve_model_path
    from ofaserve.compress.ofa import OfaSupernet
    from ofaserve.compress.tasks import batches, load_task, make_tokenizer
    from ofaserve.compress.train import finetune_teacher, metrics, paired_bootstrap, predict, supernet_logits_fn, train_ofa
    from ofaserve.compress.train import model_logits_fn

    if opts.model_type != "bert":
        raise OfaserveError(f"--model_type {opts.model_type!r} is not supported (only bert)")
    widths = sorted({float(w) for w in opts.width_mult_list}, reverse=True)
    if not widths or widths[0] != 1.0 or any(not 0 < w <= 1 for w in widths):
        raise OfaserveError(f"--width_mult_list must contain 1.0 and values in (0, 1]; got {opts.width_mult_list}")
    if opts.sampling not in ("all", "sandwich"):
        raise OfaserveError(f"--sampling must be all or sandwich, not {opts.sampling!r}")
    if opts.n_gpu < 1:
        raise OfaserveError(f"--n_gpu must be >= 1 (got {opts.n_gpu})")
    select_key = None  # which width picks the kept checkpoint (None: the mean over widths)
    if opts.select_width is not None:
        match = [w for w in widths if abs(opts.select_width - w) < 1e-3]
        if not match:
            raise OfaserveError(f"--select_width {opts.select_width} is not in --width_mult_list "
                                f"{[width_key(w) for w in widths]}")
        select_key = width_key(match[0])
    reused = _reusable_teacher(opts) if opts.teacher_dir else None
    out = check_output_dir(opts.output_dir, stage="compress", overwrite=opts.overwrite)
    if opts.n_gpu > 1 and dist.world_size() == 1:
        # data-parallel: re-enter this function in n_gpu paddle.distributed workers
        resolve_model_path(opts.model_name_or_path)  # fail fast, before spawning
        log.info("launching %d data-parallel workers (paddle.distributed)", opts.n_gpu)
        dist.launch(compress_model, opts, opts.n_gpu)
        return read_manifest(out, stage="compress")
    main = dist.is_main()
    if not main:
        opts.progress = False  # one progress bar, from rank 0
    model_dir = resolve_model_path(opts.model_name_or_path)
    data = load_task(opts.task_name, opts.train_file, opts.dev_file, opts.test_file)
    for split in ("train", "dev"):
        texts, labels = data.split(split)
        if len(set(labels.tolist())) < 2:
            raise OfaserveError(f"the {split} split of {data.name} has only one class: nothing to learn/evaluate")

    # read the checkpoint before anything is written: a corrupt one fails cleanly
    teacher, config = load_pretrained_classifier(str(model_dir), len(data.labels), seed=opts.seed)
    partial = out.with_name(out.name + ".partial")
    if main and partial.exists() and not opts.resume:
        log.info("removing stale work folder %s (pass --resume to continue it)", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)

    _seed_everything(opts.seed)
    paddle.set_device("cpu")
    tokenizer = make_tokenizer(model_dir / "vocab.txt", lowercase=True, max_seq_length=opts.max_seq_length)
    train_texts, train_labels = data.split("train")
    if opts.max_train_samples:
        train_texts, train_labels = train_texts[: opts.max_train_samples], train_labels[: opts.max_train_samples]
    dev = data.split("dev")
    test = data.splits.get("test")
    log.info("task %s: %d train / %d dev / %s test sentences, labels %s", data.name, len(train_texts),
             len(dev[0]), len(test[0]) if test else "no", data.labels)

    def evaluate(fn, split=dev):
        return metrics(predict(fn, split[0], split[1], tokenizer), split[1])

    phases: dict[str, Any] = {}
    # -------------------------------------------------------------- teacher
    teacher_ckpt = partial / "teacher" / "model_state.pdparams"
    teacher_info = partial / "teacher" / "info.json"
    if reused is not None:
        # same fine-tuned teacher as an earlier run: saves the fine-tune and makes OFA
        # settings comparable run to run (the teacher is not a source of difference)
        teacher.set_state_dict(_load_params(reused["checkpoint"]))
        info = reused["info"]
        if main:
            teacher_ckpt.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(reused["checkpoint"], teacher_ckpt)
            write_json(teacher_info, info)
        log.info("reusing the fine-tuned teacher of %s (sha256 %s...)", opts.teacher_dir,
                 info["reused_from"]["sha256"][:12])
    elif opts.resume and teacher_ckpt.is_file() and teacher_info.is_file():
        teacher.set_state_dict(_load_params(teacher_ckpt))
        info = json.loads(teacher_info.read_text())
        log.info("resumed the fine-tuned teacher from %s", teacher_ckpt)
    else:
        t0 = time.time()
        info, stats = finetune_teacher(
            teacher, (train_texts, train_labels), dev, tokenizer, epochs=opts.num_teacher_epochs,
            batch_size=opts.batch_size, lr=opts.teacher_learning_rate, seed=opts.seed,
            logging_steps=opts.logging_steps, evaluate=evaluate, progress=opts.progress)
        info["train"] = stats.as_dict()
        info["wall_s"] = round(time.time() - t0, 1)
        if main:
            _save_params(teacher.state_dict(), teacher_ckpt)
            write_json(teacher_info, info)
    phases["teacher"] = info
    teacher.eval()

    # -------------------------------------------------------------- supernet + importance
    student, _ = load_pretrained_classifier(str(model_dir), len(data.labels), seed=opts.seed)
    student.set_state_dict(teacher.state_dict())
    supernet = OfaSupernet(student, widths)
    last = partial / "ofa" / "last.pdparams"
    start_step, opt_state, history = 0, None, []
    if opts.resume and last.is_file():
        ck = _load_params(last)
        supernet.load_plain_state_dict(ck["model"])
        start_step, opt_state = int(ck["step"]), ck["optimizer"]
        history = json.loads((partial / "ofa" / "history.json").read_text())
        importance = json.loads((partial / "ofa" / "importance.json").read_text())
        log.info("resumed OFA training at step %d", start_step)
    else:
        t0 = time.time()
        n_imp = min(opts.importance_samples, len(train_texts))
        imp_batches = [(i, t, y) for i, t, y, _ in batches(train_texts[:n_imp], train_labels[:n_imp],
                                                           opts.batch_size, tokenizer=tokenizer)]
        full_before = supernet.logits_numpy(*imp_batches[0][:2], 1.0)
        importance = supernet.reorder_by_importance(imp_batches)
        full_after = supernet.logits_numpy(*imp_batches[0][:2], 1.0)
        importance["full_width_logits_max_abs_diff_after_reorder"] = float(np.abs(full_before - full_after).max())
        importance["sentences"] = n_imp
        importance["wall_s"] = round(time.time() - t0, 1)
        log.info("reordered heads/neurons by importance on %d sentences (full-width logits change %.2e)",
                 n_imp, importance["full_width_logits_max_abs_diff_after_reorder"])
        if opts.eval_before_ofa:  # what reordering alone keeps, before any OFA training
            importance["dev_before_ofa"] = {width_key(w): evaluate(supernet_logits_fn(supernet, w)) for w in widths}
        if main:
            write_json(partial / "ofa" / "importance.json", importance)

    best, best_weights = {"score": -1.0}, [None]
    for h in history:
        if h["score"] > best["score"]:
            best = h

    def on_save(step: int, optimizer_state: dict) -> None:
        nonlocal best
        supernet.eval()
        dev_res = {width_key(w): evaluate(supernet_logits_fn(supernet, w)) for w in widths}
        score = (dev_res[select_key]["accuracy"] if select_key is not None
                 else float(np.mean([r["accuracy"] for r in dev_res.values()])))
        entry = {"step": step, "dev": dev_res, "score": score}
        history.append(entry)
        log.info("step %d dev accuracy %s", step, {k: round(v["accuracy"], 4) for k, v in dev_res.items()})
        weights = supernet.plain_state_dict()
        if score > best["score"]:
            best = entry
            best_weights[0] = weights
            if main:
                _save_params(weights, partial / "ofa" / "best.pdparams")
        if main:
            _save_params({"model": weights, "optimizer": optimizer_state, "step": step}, last)
            write_json(partial / "ofa" / "history.json", history)

    t0 = time.time()
    ofa_info, ofa_stats = train_ofa(
        supernet, teacher, (train_texts, train_labels), tokenizer, epochs=opts.num_train_epochs,
        batch_size=opts.batch_size, lr=opts.learning_rate, seed=opts.seed, lambda_hidden=opts.lambda_hidden,
        lambda_logit=opts.lambda_logit, lambda_ce=opts.lambda_ce,
        sampling=opts.sampling, logging_steps=opts.logging_steps,
        save_steps=opts.save_steps, on_save=on_save, start_step=start_step, opt_state=opt_state,
        progress=opts.progress)
    ofa_info["train"] = ofa_stats.as_dict()
    ofa_info["wall_s"] = round(time.time() - t0, 1)
    ofa_info["best_step"] = best["step"]
    ofa_info["history"] = history
    phases["ofa"] = ofa_info

    # -------------------------------------------------------------- final evaluation
    supernet.load_plain_state_dict(best_weights[0] if best_weights[0] is not None
                                   else _load_params(partial / "ofa" / "best.pdparams"))
    supernet.eval()
    if not main:
        return {}
    # dev figures of every width come from the evaluation of the kept checkpoint (same
    # weights); the test split is evaluated once here, with a paired bootstrap vs the teacher.
    results: dict[str, Any] = {"teacher": {"dev": evaluate(model_logits_fn(teacher))}, "widths": {}}
    teacher_test = None
    if test:
        logits = predict(model_logits_fn(teacher), test[0], test[1], tokenizer)
        teacher_test = logits.argmax(-1)
        results["teacher"]["test"] = metrics(logits, test[1])
    for w in widths:
        r = {"dev": best["dev"][width_key(w)]}
        if test:
            logits = predict(supernet_logits_fn(supernet, w), test[0], test[1], tokenizer)
            r["test"] = metrics(logits, test[1])
            r["test"]["vs_teacher"] = paired_bootstrap(logits.argmax(-1), teacher_test, test[1])
        results["widths"][width_key(w)] = r
    splits = {"dev": dev, **({"test": test} if test else {})}
    results["majority_class"] = {n: float(max(np.mean(s[1]), 1 - np.mean(s[1]))) if len(data.labels) == 2
                                 else None for n, s in splits.items()}

    # -------------------------------------------------------------- write the output atomically
    with atomic_output_dir(out) as tmp:
        (tmp / "teacher").mkdir()
        (tmp / "supernet").mkdir()
        (tmp / "tokenizer").mkdir()
        shutil.copy2(teacher_ckpt, tmp / "teacher" / "model_state.pdparams")
        shutil.copy2(partial / "ofa" / "best.pdparams", tmp / "supernet" / "model_state.pdparams")
        shutil.copy2(model_dir / "vocab.txt", tmp / "tokenizer" / "vocab.txt")
        tokenizer.no_truncation()
        tokenizer.save(str(tmp / "tokenizer" / "tokenizer.json"))
        write_json(tmp / "results.json", results)
        manifest = write_manifest(
            tmp, "compress", model_type="bert", task=data.name, labels=data.labels,
            model_config=config, width_mult_list=widths, max_seq_length=opts.max_seq_length,
            do_lower_case=True, pad_token_id=int(config["pad_token_id"]),
            checkpoints={"teacher": "teacher/model_state.pdparams", "supernet": "supernet/model_state.pdparams"},
            checkpoint_sha256={"supernet": sha256_file(tmp / "supernet" / "model_state.pdparams"),
                               "teacher": sha256_file(tmp / "teacher" / "model_state.pdparams")},
            tokenizer={"vocab": "tokenizer/vocab.txt", "tokenizer_json": "tokenizer/tokenizer.json"},
            source={"model": str(opts.model_name_or_path), "model_dir": str(model_dir), "data": data.source,
                    "splits": {n: len(s[0]) for n, s in data.splits.items()},
                    "train_sentences_used": len(train_texts)},
            options={k: v for k, v in asdict(opts).items() if k not in ("progress",)},
            importance=importance, phases=phases, results=results, machine=machine_info(),
            finished=now_iso())
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


def results_table(manifest: dict) -> str:
    """The accuracy-per-width table (markdown), from a compress manifest."""
    res = manifest["results"]
    splits = [s for s in ("dev", "test") if s in res["teacher"]]
    head = "| model | " + " | ".join(f"{s} acc | {s} F1" for s in splits) + " | test acc - teacher (95% CI) |"
    rows = [head, "|" + "---|" * (2 * len(splits) + 2)]
    rows.append("| teacher | " + " | ".join(f"{res['teacher'][s]['accuracy']:.4f} | {res['teacher'][s]['f1']:.4f}"
                                           for s in splits) + " | |")
    for w, r in res["widths"].items():
        s_ci = r.get("test", {}).get("vs_teacher")
        ci = f"{s_ci['diff']:+.4f} [{s_ci['ci95'][0]:+.4f}, {s_ci['ci95'][1]:+.4f}]" if s_ci else "n/a"
        rows.append(f"| width {w} | " + " | ".join(f"{r[s]['accuracy']:.4f} | {r[s]['f1']:.4f}" for s in splits)
                    + f" | {ci} |")
    return "\n".join(rows)
