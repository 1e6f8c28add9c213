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

import contextlib
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.machine import machine_info
from ofaserve.core.manifests import CompressManifest, now_iso
from ofaserve.core.files import sha256_file, write_json
from ofaserve.core.outputs import atomic_output_dir, check_output_dir, check_work_dir, fresh_work_dir, output_lock
from ofaserve.compress import distributed as dist
from ofaserve.compress.bert import classifier_from, head_for_task, read_pretrained, resolve_model_path
from ofaserve.compress.evaluation import Scorer
from ofaserve.compress.step_budget import CompressStepBudget
from ofaserve.compress.submodel import fit_widths
from ofaserve.core.tokenizer import encode_batch, make_tokenizer
from ofaserve.compress.options import CompressOptions
from ofaserve.core.batching import batches, predict
from ofaserve.core.metrics import paired_bootstrap, score
from ofaserve.core.subnet import Depth, Subnet, check_depths, grid, store_result
from ofaserve.core.tasks import Split, TaskData, TaskType, load_task, task_name_of
from ofaserve.core.width import Width

log = logging.getLogger("ofaserve.compress")

def _reusable_teacher(opts: CompressOptions) -> dict:
    """The fine-tuned teacher of an earlier compress output (``--teacher_dir``), checked to
    come from the same model and data, with its checksum verified."""
    folder = opts.teacher_dir
    manifest = CompressManifest.read(folder)
    ckpt = manifest.checkpoint(folder, "teacher")
    if not ckpt.is_file():
        raise OfaserveError(f"--teacher_dir {folder}: {ckpt} is missing; re-run the compress stage that made it")
    theirs = manifest.options
    same = [("model_name_or_path", manifest.source["model"], str(opts.model_name_or_path)),
            ("train_file", theirs.get("train_file"), opts.train_file),
            ("data_dir", theirs.get("data_dir"), opts.data_dir), ("task_type", theirs.get("task_type"), opts.task_type)]
    if not opts.train_file:  # a registered or GLUE task: its name says which data
        same.append(("task_name", manifest.task, task_name_of(opts.task_name)))
    differ = [f"{k} {a!r} vs {b!r}" for k, a, b in same if a != b]
    if differ:
        raise OfaserveError(f"--teacher_dir {folder} was trained on other inputs ({'; '.join(differ)}, theirs vs "
                            "this run's): pass a compress output of the same model and data")
    sha = sha256_file(ckpt)
    if sha != manifest.checkpoint_sha256.get("teacher"):
        raise OfaserveError(f"--teacher_dir {folder}: {ckpt} does not match its manifest checksum (corrupted?)")
    info = {**manifest.phases["teacher"],
            "reused_from": {"dir": str(Path(folder).resolve()), "sha256": sha, "created": manifest.created}}
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


def _check_options(opts: CompressOptions) -> tuple[list[float], list[float], str | None]:
    """(widths, widest first; depths, deepest first; the key of the subnet whose dev score
    picks the kept checkpoint, or None for the mean over subnets). Fails before any work on a
    bad option."""
    if opts.model_type != "bert":
        raise OfaserveError(f"--model_type {opts.model_type!r} is not supported (only bert)")
    widths = sorted({float(w) for w in opts.width_mult_list}, reverse=True)
    if not widths or widths[0] != 1.0 or any(not 0 < w <= 1 for w in widths):
        raise OfaserveError(f"--width_mult_list must contain 1.0 and values in (0, 1]; got {opts.width_mult_list}")
    if opts.sampling not in ("all", "sandwich"):
        raise OfaserveError(f"--sampling must be all or sandwich, not {opts.sampling!r}")
    if opts.n_gpu < 1:
        raise OfaserveError(f"--n_gpu must be >= 1 (got {opts.n_gpu})")
    try:
        depths = sorted({Depth.parse(d).value for d in opts.depth_mult_list}, reverse=True)
    except OfaserveError as e:
        raise OfaserveError(f"--depth_mult_list: {e}") from None
    if not depths or depths[0] != 1.0:
        raise OfaserveError(f"--depth_mult_list must contain 1.0 and values in (0, 1]; got {opts.depth_mult_list}")
    if opts.select_width is None:
        if opts.select_depth is not None:
            raise OfaserveError("--select_depth needs --select_width (the subnet you will deploy)")
        return widths, depths, None
    try:
        width = Width.parse(opts.select_width).among(widths)
    except OfaserveError as e:
        raise OfaserveError(f"--select_width: {e} (--width_mult_list)") from None
    try:
        depth = Depth.parse(1.0 if opts.select_depth is None else opts.select_depth).among(depths)
    except OfaserveError as e:
        raise OfaserveError(f"--select_depth: {e} (--depth_mult_list)") from None
    return widths, depths, Subnet(width, depth).key


@dataclass
class _Run:
    """The inputs every phase of one compress run reads, resolved once."""
    opts: CompressOptions
    widths: list[float]
    depths: list[float]
    select_key: str | None
    main: bool
    out: Path
    partial: Path
    model_dir: Path
    data: TaskData
    tokenizer: Any
    train: Split
    dev: Split
    test: Split | None
    source: Any = None  # compress.bert.PretrainedModel: the checkpoint as read from its folder
    head: dict | None = None  # how the model's own fine-tuned head was matched to the task (it is the teacher)
    scorer: Any = None  # compress.evaluation.Scorer: how whole splits are scored
    step_budget: Any = None  # compress.step_budget.CompressStepBudget under --time_budget_s

    @property
    def subnets(self) -> list[Subnet]:
        """Every trained (width, depth), the full model first (just the widths at depth 1.0)."""
        return grid(self.widths, self.depths)

    def evaluate(self, fn, split: Split | None = None) -> dict:
        """The task's metrics of logits function ``fn`` on ``split`` (default: dev)."""
        split = split or self.dev
        return score(self.data.spec, predict(fn, split, self.tokenizer), split.labels)

    @property
    def report_split(self) -> str:
        """Where each width is compared with the teacher (paired bootstrap): test when the
        task has one (never used to choose anything), else dev (GLUE's test has no labels)."""
        return "test" if self.test else "dev"

    def final_splits(self) -> dict[str, Split]:
        """What the final evaluation scores: the report split and the task's other labelled
        evaluation splits (MNLI's dev_mismatched); dev itself comes from the kept checkpoint."""
        extra = {n: s for n, s in self.data.splits.items() if n not in ("train", "dev", "test")}
        return {self.report_split: self.test or self.dev, **extra}


def compress_model(opts: CompressOptions) -> CompressManifest | None:
    """Run the whole compress stage (what ``ofaserve compress`` runs); returns the manifest
    it wrote to ``opts.output_dir``.

    Reads: the model ``opts.model_name_or_path`` (``minilm-l6``, a Hugging Face or a PaddleNLP
    BERT folder), the task's data (``task_name`` with ``data_dir``, or ``train_file`` /
    ``dev_file`` / ``test_file``) and, with ``teacher_dir``, an earlier compress output.
    Writes: ``opts.output_dir`` (``manifest.json``, ``teacher/``, ``supernet/``,
    ``tokenizer/``), built in ``<output_dir>.partial/`` and swapped in whole at the end; the
    output and its ``.partial`` are checked before any work and locked for the whole run (by
    the launching process under data parallelism). The CLI's ``--profile`` presets are
    ``PROFILES``: pass their fields (``CompressOptions(**PROFILES["quick"], ...)``). The CLI
    also calls ``ofaserve.runtime.paddle_cpu.configure()`` before paddle is imported (threads,
    MKL's code path on AMD CPUs); an embedding program that wants the same settings calls it
    before its first ``import paddle``.
    Returns: the ``CompressManifest`` (results per subnet: ``results_table()``,
    ``dev_scores()``); None only inside a data-parallel worker other than the first
    (``n_gpu > 1``; the caller's process gets the manifest).
    Raises: ``OfaserveError`` (the one error type a user can act on) for a bad option, a
    model or data that cannot be used, or an output folder it may not replace or that another
    run holds; ``OSError`` where the machine refuses a write (a full disk, permissions). Either
    way, and on KeyboardInterrupt, what was at ``output_dir`` before is left as it was
    (``resume=True`` continues an interrupted run from its last checkpoint).
    """
    widths, depths, select_key = _check_options(opts)
    # the teacher is copied into the work folder before the swap: --teacher_dir may be the output
    inputs = [opts.model_name_or_path, opts.train_file, opts.dev_file, opts.test_file,
              *([opts.teacher_dir] if opts.teacher_dir and not _same(opts.teacher_dir, opts.output_dir) else [])]
    out = check_output_dir(opts.output_dir, stage="compress", overwrite=opts.overwrite, inputs=inputs)
    check_work_dir(out, stage="compress", keep_it=opts.resume or opts.overwrite)
    with contextlib.ExitStack() as held:
        if dist.world_size() == 1:
            held.enter_context(output_lock(out))
        return _compress(opts, widths, depths, select_key, out)


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _compress(opts: CompressOptions, widths: list[float], depths: list[float], select_key: str | None,
              out: Path) -> CompressManifest | None:
    """The phases of ``compress_model``, run once its output is checked and locked."""
    step_budget = None
    if opts.time_budget_s is not None:  # the clock starts before any work
        step_budget = CompressStepBudget(opts.time_budget_s, opts.n_gpu)
    reused = _reusable_teacher(opts) if opts.teacher_dir else None
    if opts.n_gpu > 1 and dist.world_size() == 1:
        # data-parallel: re-enter this function in n_gpu paddle.distributed workers
        resolve_model_path(opts.model_name_or_path)  # fail fast, before spawning
        log.info("launching %d data-parallel workers (paddle.distributed)", opts.n_gpu)
        dist.launch(compress_model, opts, opts.n_gpu)
        return CompressManifest.read(out)
    run, teacher, config = _prepare(opts, widths, depths, select_key, out)
    if step_budget is not None:
        run.step_budget = step_budget
        step_budget.attach(run)
    phases: dict[str, Any] = {"teacher": _teacher_phase(run, teacher, reused)}
    teacher.eval()
    supernet, importance, resume = _supernet_phase(run, teacher)
    keeper = _CheckpointKeeper(run, supernet, resume["history"])
    phases["ofa"] = _ofa_phase(run, supernet, teacher, keeper, resume)
    keeper.load_best()
    if not run.main:
        return None
    results = _final_evaluation(run, supernet, teacher, keeper)
    run.scorer.close()
    return _write_output(run, config, importance, phases, results)


def _prepare(opts: CompressOptions, widths: list[float], depths: list[float], select_key: str | None, out: Path):
    """Load data, tokenizer and the pretrained teacher; set up the ``.partial`` work folder."""
    import paddle


    main = dist.is_main()
    if not main:
        opts.progress = False  # one progress bar, from rank 0
    data = load_task(opts.task_name, opts.train_file, opts.dev_file, opts.test_file, data_dir=opts.data_dir,
                     task_type=opts.task_type)
    for split in ("train", "dev"):
        if len(set(data.split(split).labels.tolist())) < 2:
            raise OfaserveError(f"the {split} split of {data.name} has only one distinct label: nothing to "
                                "learn or evaluate")
    # read the checkpoint before anything is written: a corrupt one, or a head that does not fit, fails cleanly
    source = read_pretrained(opts.model_name_or_path)
    head, head_record = (None, None) if source.head is None or opts.new_head else head_for_task(source, data.spec)
    teacher, config = classifier_from(source, data.spec.num_outputs, head, seed=opts.seed)
    widths = fit_widths(widths, config)  # exact fractions of the heads: see fit_widths
    try:  # two depths that keep as many of this model's layers fail here, before anything is written
        check_depths(depths, int(config["num_hidden_layers"]))
    except OfaserveError as e:
        raise OfaserveError(f"--depth_mult_list: {e}") from None
    model_dir = source.folder
    partial = fresh_work_dir(out, stage="compress", resume=opts.resume or not main)
    _seed_everything(opts.seed)
    paddle.set_device("cpu")
    tokenizer = make_tokenizer(source.vocab, lowercase=source.lowercase, max_seq_length=opts.max_seq_length)
    train = data.split("train")
    if opts.max_train_samples:
        train = train.take(slice(0, opts.max_train_samples))
    dev, test = data.split("dev"), data.splits.get("test")
    log.info("task %s: %d train / %d dev / %s test sentences, labels %s", data.name, len(train),
             len(dev), len(test) if test else "no", data.labels)
    run = _Run(opts, widths, depths, select_key, main, out, partial, model_dir, data, tokenizer, train, dev, test,
               source=source, head=head_record)
    run.scorer = _scorer(run)
    return run, teacher, config


def _scorer(run: _Run):
    """Scores whole splits; its probe batch spans dev's short to long sentences."""

    pick = np.linspace(0, len(run.dev) - 1, num=min(16, len(run.dev))).astype(int)
    probe = encode_batch(run.tokenizer, run.dev.inputs(pick))
    # one scratch folder per data-parallel worker: every worker scores, each writes its own static models
    scratch = run.partial / ("scoring" if dist.world_size() == 1 else f"scoring_rank{dist.rank()}")
    return Scorer(scratch, probe, static=run.opts.eval_runtime == "paddle-inference")


def _teacher_phase(run: _Run, teacher, reused: dict | None) -> dict:
    """Fine-tune the teacher, or take it from ``--teacher_dir`` / a resumed run / the model's
    own fine-tuned head."""
    from ofaserve.compress.train import finetune_teacher

    opts = run.opts
    teacher_ckpt = run.partial / "teacher" / "model_state.pdparams"
    teacher_info = run.partial / "teacher" / "info.json"
    if reused is not None:
        # same fine-tuned teacher as an earlier run: saves the fine-tune and makes OFA
        # settings comparable run to run (the teacher is not a source of difference)
        teacher.set_state_dict(_load_params(reused["checkpoint"]))
        info = reused["info"]
        if run.main:
            teacher_ckpt.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(reused["checkpoint"], teacher_ckpt)
            write_json(teacher_info, info)
        log.info("reusing the fine-tuned teacher of %s (sha256 %s...)", opts.teacher_dir,
                 info["reused_from"]["sha256"][:12])
        return info
    if opts.resume and teacher_ckpt.is_file() and teacher_info.is_file():
        teacher.set_state_dict(_load_params(teacher_ckpt))
        log.info("resumed the fine-tuned teacher from %s", teacher_ckpt)
        return json.loads(teacher_info.read_text())
    if run.head is not None:
        return _fine_tuned_teacher(run, teacher, teacher_ckpt, teacher_info)
    t0 = time.time()
    sizer = run.step_budget.teacher_sizer(teacher) if run.step_budget is not None else None
    info, stats = finetune_teacher(
        teacher, run.train, run.dev, run.tokenizer, spec=run.data.spec, epochs=opts.num_teacher_epochs,
        batch_size=opts.batch_size, lr=opts.teacher_learning_rate, seed=opts.seed,
        logging_steps=opts.logging_steps, progress=opts.progress, sizer=sizer,
        evaluate=lambda model, epoch: run.evaluate(run.scorer.teacher(model, version=("epoch", epoch))))
    info["train"] = stats.as_dict()
    info["wall_s"] = round(time.time() - t0, 1)
    if run.main:
        _save_params(teacher.state_dict(), teacher_ckpt)
        write_json(teacher_info, info)
    return info


def _fine_tuned_teacher(run: _Run, teacher, teacher_ckpt: Path, teacher_info: Path) -> dict:
    """The model arrived fine-tuned with a head that fits the task: it is the teacher as it
    is. Its dev score is measured first and said, so a model fine-tuned on other data or with
    other labels shows here, before any OFA training."""
    t0 = time.time()
    teacher.eval()
    dev = run.evaluate(run.scorer.teacher(teacher, version="as given"))
    metric = run.data.spec.main_metric
    log.info("teacher: the fine-tuned model of %s as it is (head matched %s), not fine-tuned again: dev %s %.4f",
             run.source.folder, run.head.get("matched", "by its one output"), metric, dev[metric])
    info = {"fine_tuned_by": "the model's own fine-tuning", "head": run.head, "steps": 0, "epochs": 0,
            "best_dev": {metric: dev[metric]}, "dev_as_given": dev, "wall_s": round(time.time() - t0, 1)}
    if run.main:
        _save_params(teacher.state_dict(), teacher_ckpt)
        write_json(teacher_info, info)
    return info


def _supernet_phase(run: _Run, teacher):
    """The OFA supernet from the teacher's weights, heads and neurons reordered by importance
    (or the state of a resumed run). Returns (supernet, importance record, resume state)."""
    from ofaserve.compress.ofa import OfaSupernet

    student, _ = classifier_from(run.source, run.data.spec.num_outputs, seed=run.opts.seed)
    student.set_state_dict(teacher.state_dict())
    supernet = OfaSupernet(student, run.widths, run.depths)
    last = run.partial / "ofa" / "last.pdparams"
    if run.opts.resume and last.is_file():
        ck = _load_params(last)
        supernet.load_plain_state_dict(ck["model"])
        log.info("resumed OFA training at step %d", int(ck["step"]))
        resume = {"start_step": int(ck["step"]), "opt_state": ck["optimizer"],
                  "history": json.loads((run.partial / "ofa" / "history.json").read_text())}
        return supernet, json.loads((run.partial / "ofa" / "importance.json").read_text()), resume
    importance = _reorder(run, supernet)
    if run.main:
        write_json(run.partial / "ofa" / "importance.json", importance)
    return supernet, importance, {"start_step": 0, "opt_state": None, "history": []}


def _reorder(run: _Run, supernet) -> dict:
    """Sort heads and neurons by importance on a few train sentences; the full width must
    compute the same function afterwards (checked and recorded)."""
    t0 = time.time()
    n_imp = min(run.opts.importance_samples, len(run.train))
    imp_batches = [(i, t, y) for i, t, y, _ in batches(run.train.take(slice(0, n_imp)), run.opts.batch_size,
                                                       tokenizer=run.tokenizer)]
    full_before = supernet.logits_numpy(*imp_batches[0][:2], 1.0)
    from ofaserve.compress.train import gold_loss

    spec = run.data.spec
    importance = supernet.reorder_by_importance(imp_batches, loss_fct=lambda out, y: gold_loss(spec, out, y))
    full_after = supernet.logits_numpy(*imp_batches[0][:2], 1.0)
    importance["full_width_logits_max_abs_diff_after_reorder"] = float(np.abs(full_before - full_after).max())
    importance["sentences"] = n_imp
    importance["wall_s"] = round(time.time() - t0, 1)
    log.info("reordered heads/neurons by importance on %d sentences (full-width logits change %.2e)",
             n_imp, importance["full_width_logits_max_abs_diff_after_reorder"])
    if run.opts.eval_before_ofa:  # what reordering alone keeps, before any OFA training
        importance["dev_before_ofa"] = {
            s.key: run.evaluate(run.scorer.width(supernet, s.width.value, "before_ofa", s.depth.value))
            for s in run.subnets}
    return importance


class _CheckpointKeeper:
    """Evaluates every width on dev at each save and keeps the best checkpoint by the
    pre-set rule: the task's main metric at ``--select_width`` (and ``--select_depth``), else
    its mean over every trained subnet."""

    def __init__(self, run: _Run, supernet, history: list[dict]):
        self.run, self.supernet, self.history = run, supernet, history
        self.best: dict = max(history, key=lambda h: h["score"], default={"score": -1.0})
        self.best_weights: dict | None = None
        # the kept checkpoint's dev outputs per subnet, for the final evaluation's dev intervals
        # (not in the history file: a resumed run scores its best checkpoint's dev again)
        self.best_dev_outputs: dict[str, np.ndarray] = {}

    def on_save(self, step: int, optimizer_state: dict) -> None:
        run = self.run
        self.supernet.eval()
        outputs = {s.key: predict(run.scorer.width(self.supernet, s.width.value, step, s.depth.value), run.dev,
                                  run.tokenizer) for s in run.subnets}
        dev_res = {k: score(run.data.spec, o, run.dev.labels) for k, o in outputs.items()}
        metric = run.data.spec.main_metric
        value = (dev_res[run.select_key][metric] if run.select_key is not None
                 else float(np.mean([r[metric] for r in dev_res.values()])))
        entry = {"step": step, "dev": dev_res, "score": value}
        self.history.append(entry)
        log.info("step %d dev %s %s", step, metric, {k: round(v[metric], 4) for k, v in dev_res.items()})
        weights = self.supernet.plain_state_dict()
        if "step" not in self.best or value > self.best["score"]:
            self.best, self.best_weights, self.best_dev_outputs = entry, weights, outputs
            if run.main:
                _save_params(weights, run.partial / "ofa" / "best.pdparams")
        if run.main:
            _save_params({"model": weights, "optimizer": optimizer_state, "step": step},
                         run.partial / "ofa" / "last.pdparams")
            write_json(run.partial / "ofa" / "history.json", self.history)

    def load_best(self) -> None:
        self.supernet.load_plain_state_dict(self.best_weights if self.best_weights is not None
                                            else _load_params(self.run.partial / "ofa" / "best.pdparams"))
        self.supernet.eval()


def _ofa_phase(run: _Run, supernet, teacher, keeper: _CheckpointKeeper, resume: dict) -> dict:
    from ofaserve.compress.train import train_ofa

    opts = run.opts
    t0 = time.time()
    sizer = (run.step_budget.ofa_sizer(supernet, teacher, resume["start_step"]) if run.step_budget is not None
             else None)
    info, stats = train_ofa(
        supernet, teacher, run.train, run.tokenizer, spec=run.data.spec, epochs=opts.num_train_epochs,
        batch_size=opts.batch_size, lr=opts.learning_rate, seed=opts.seed, lambda_hidden=opts.lambda_hidden,
        lambda_logit=opts.lambda_logit, lambda_ce=opts.lambda_ce, sampling=opts.sampling,
        logging_steps=opts.logging_steps, save_steps=opts.save_steps, on_save=keeper.on_save,
        start_step=resume["start_step"], opt_state=resume["opt_state"], progress=opts.progress, sizer=sizer)
    info["train"] = stats.as_dict()
    info["wall_s"] = round(time.time() - t0, 1)
    info["best_step"] = keeper.best["step"]
    info["history"] = keeper.history
    return info


def _final_evaluation(run: _Run, supernet, teacher, keeper: _CheckpointKeeper) -> dict:
    """Dev figures of every width come from the evaluation of the kept checkpoint (same
    weights); the report split (test, else dev) and the other evaluation splits are scored
    here. Each width gets a paired bootstrap of the main metric against the teacher on the
    report split and on dev (what ``--width_mult auto`` bounds its drop by)."""
    spec, report, best = run.data.spec, run.report_split, keeper.best
    teacher_fn = run.scorer.teacher(teacher, version="final")
    teacher_dev = predict(teacher_fn, run.dev, run.tokenizer)
    results: dict[str, Any] = {"metric": spec.main_metric, "report_split": report,
                               "teacher": {"dev": score(spec, teacher_dev, run.dev.labels)}, "widths": {}}
    teacher_out = {}
    for name, split in run.final_splits().items():
        teacher_out[name] = predict(teacher_fn, split, run.tokenizer)
        results["teacher"][name] = score(spec, teacher_out[name], split.labels)
    for sub in run.subnets:
        fn = run.scorer.width(supernet, sub.width.value, best["step"], sub.depth.value)
        r = {"dev": dict(best["dev"][sub.key])}
        if not sub.depth.full:
            r["layers"] = supernet.kept_layers(sub.depth.value)
        for name, split in run.final_splits().items():
            outputs = predict(fn, split, run.tokenizer)
            r[name] = score(spec, outputs, split.labels)
            if name == report:
                r[name]["vs_teacher"] = paired_bootstrap(spec, outputs, teacher_out[name], split.labels)
        if report != "dev":
            dev_out = keeper.best_dev_outputs.get(sub.key)
            if dev_out is None:  # resumed past the kept checkpoint's evaluation
                dev_out = predict(fn, run.dev, run.tokenizer)
            r["dev"]["vs_teacher"] = paired_bootstrap(spec, dev_out, teacher_dev, run.dev.labels)
        store_result(results, sub, r)
    splits = {"dev": run.dev, **run.final_splits()}
    results["majority_class"] = {n: _majority_share(s.labels) if spec.type == TaskType.CLASSIFICATION else None
                                 for n, s in splits.items()}
    return results


def _majority_share(labels: np.ndarray) -> float:
    """The accuracy of always answering the most frequent class."""
    return float(np.bincount(np.asarray(labels, dtype=np.int64)).max() / max(1, len(labels)))


def _write_output(run: _Run, config: dict, importance: dict, phases: dict, results: dict) -> CompressManifest:
    """Swap the finished output into place atomically; drop the work folder."""
    opts, data, partial = run.opts, run.data, run.partial
    with atomic_output_dir(run.out) as tmp:
        for sub in ("teacher", "supernet", "tokenizer"):
            (tmp / sub).mkdir()
        shutil.copy2(partial / "teacher" / "model_state.pdparams", tmp / "teacher" / "model_state.pdparams")
        shutil.copy2(partial / "ofa" / "best.pdparams", tmp / "supernet" / "model_state.pdparams")
        shutil.copy2(run.model_dir / "vocab.txt", tmp / "tokenizer" / "vocab.txt")
        run.tokenizer.no_truncation()
        run.tokenizer.save(str(tmp / "tokenizer" / "tokenizer.json"))
        write_json(tmp / "results.json", results)
        manifest = CompressManifest(
            model_type="bert", task=data.name, task_spec=data.spec, labels=data.labels,
            model_config=config, width_mult_list=run.widths, depth_mult_list=run.depths,
            max_seq_length=opts.max_seq_length,
            do_lower_case=run.source.lowercase, pad_token_id=int(config["pad_token_id"]),
            checkpoints={"teacher": "teacher/model_state.pdparams", "supernet": "supernet/model_state.pdparams"},
            checkpoint_sha256={"supernet": sha256_file(tmp / "supernet" / "model_state.pdparams"),
                               "teacher": sha256_file(tmp / "teacher" / "model_state.pdparams")},
            tokenizer={"vocab": "tokenizer/vocab.txt", "tokenizer_json": "tokenizer/tokenizer.json"},
            source={"model": str(opts.model_name_or_path), "model_dir": str(run.model_dir),
                    "model_format": run.source.format, "data": data.source,
                    "splits": {n: len(s) for n, s in data.splits.items()},
                    "train_sentences_used": len(run.train)},
            options={k: v for k, v in asdict(opts).items() if k not in ("progress",)},
            importance=importance, phases=phases, results=results, evaluation=run.scorer.record(),
            machine=machine_info(), budget=run.step_budget.record() if run.step_budget is not None else None,
            finished=now_iso())
        manifest.write(tmp)
    shutil.rmtree(partial, ignore_errors=True)
    return manifest
