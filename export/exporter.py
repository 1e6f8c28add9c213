"""``export_subnet``: slice one trained subnet (width, depth) out of the OFA supernet and ship it as a
standalone sub model + Paddle static model + ONNX (+ precision variants), parity-checked.

Everything is written into a temp folder next to ``output_dir`` and swapped into place
only when every check passed (``atomic_output_dir``): a failed export never changes
what is at ``output_dir``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import files_sha256
from ofaserve.core.vocabulary import DropBound, Precision, Runtime
from ofaserve.core.machine import machine_info
from ofaserve.core.files import fsync_path
from ofaserve.core.manifests import ExportManifest, now_iso, write_manifest
from ofaserve.core.outputs import atomic_output_dir, check_output_dir, check_output_files, output_lock
from ofaserve.core.subnet import Depth, Subnet
from ofaserve.core.width import AUTO, Width, parse_width_choice
from ofaserve.core.metrics import predictions, score
from ofaserve.core.tasks import Split, TaskType
from ofaserve.export import artifact_logits
from ofaserve.export.build import build_artifacts
from ofaserve.export.parity import PARITY_TOL, ParityError, dev_eval, dev_metric_tolerance, parity_inputs, run_parity
from ofaserve.export.precisions import precision_variants
from ofaserve.export.selection import RUNTIMES, select_by_latency, select_by_metric_drop, selection_table
from ofaserve.export.source import build_supernet, load_compress_output, load_dev, load_test, load_tokenizer
from ofaserve.compress.submodel import count_params_config, flops, full_width_config, load_sub_model
from ofaserve.export.check_budget import (ExportCheckBudget, LaterDev, check_parity_runtimes, later_passes,
                                     runtimes_to_check)
from ofaserve.compress.bert import count_params
from ofaserve.runtime import capabilities

log = logging.getLogger("ofaserve.export")
# The manifest stage of a --sub_model_output_dir copy: a later export may replace it.
SUB_MODEL_STAGE = "export_sub_model"
# What paddle.jit.save writes for a prefix (paddle 3: .json; paddle 2.6: .pdmodel).
STATIC_SUFFIXES = (".json", ".pdmodel", ".pdiparams")


@dataclass
class ExportOptions:
    model_name_or_path: str
    output_dir: str
    width_mult: Width | str = Width(1.0)  # or AUTO: chosen by a rule (see export_subnet)
    depth_mult: float | None = None  # None: 1.0, or with AUTO chosen with the width
    model_type: str = "bert"
    max_seq_length: int | None = None
    sub_model_output_dir: str | None = None
    static_sub_model: str | None = None
    onnx_model: bool = True
    opset: int = 14
    fuse_attention: bool = True
    precisions: bool = True
    int8: bool = True
    int8_plain: bool = True  # also the plain graph's INT8 IR when a packed graph exists
    max_metric_drop: float | None = None
    drop_bound: DropBound = DropBound.CI95_UPPER  # what max_metric_drop holds: see DropBound
    latency_budget_ms: float | None = None
    batch_size: int = 16
    seq_len: int = 128
    runtime: Runtime = Runtime.OPENVINO
    n_gpu: int = 1
    tolerance: float = PARITY_TOL
    overwrite: bool = False
    progress: bool = True
    fp16: bool = True
    parity_runtimes: list[str] | None = None  # None: every runtime (export.check_budget)
    time_budget_s: float | None = None  # None: every dev pass on the whole dev set

    def __post_init__(self) -> None:  # the Python API's edge: names parsed once, here
        self.width_mult = parse_width_choice(self.width_mult)
        self.depth_mult = None if self.depth_mult is None else Depth.parse(self.depth_mult).value
        self.runtime = Runtime.parse(self.runtime)
        self.drop_bound = DropBound.parse(self.drop_bound)


def export_subnet(model_name_or_path: str | os.PathLike, output_dir: str | os.PathLike,
                  width_mult: Width | float | str = 1.0, **kwargs: Any) -> ExportManifest:
    """Export one subnet of a compress output (what ``ofaserve export`` runs); returns the
    manifest it wrote to ``output_dir``.

    ``width_mult`` is a trained width (a ``Width``, or a number or string it parses) with
    ``depth_mult`` a trained depth (default 1.0), or ``"auto"`` with ``max_metric_drop``
    (the cheapest subnet, width x layers kept, whose dev drop from the teacher is within it;
    ``drop_bound`` says whether the drop's 95% interval's upper end or the drop is held) or
    ``latency_budget_ms`` (the best scoring subnet meeting the budget on ``runtime`` at
    ``batch_size x seq_len``, measured here), chosen over every trained (width, depth).
    Other keyword arguments: the fields of ``ExportOptions`` (e.g. ``max_seq_length``, the
    longest input the served model accepts; default the compress run's), by name.
    Reads: the compress output ``model_name_or_path`` (its manifest, its supernet checkpoint,
    checked against the sha256 the manifest records, and its dev split).
    Writes: ``output_dir`` (``manifest.json``, ``sub_model/``, ``static/``, ``onnx/`` with the
    packed graph and the precision variants, ``tokenizer/``), and ``sub_model_output_dir`` /
    ``static_sub_model`` when given; built in a temp folder and swapped in only when every
    check passed.
    Returns: the ``ExportManifest`` (parity figures, dev score, precision records, sha256 of
    every file written).
    Raises: ``OfaserveError`` for a bad option or input, an output it may not replace or that
    another run holds; ``ParityError`` (an ``OfaserveError``, with a ``table`` of the figures)
    when an artifact disagrees with the supernet; ``OSError`` where the machine refuses a
    write. Nothing at ``output_dir`` changes then. ``TypeError`` for a keyword that is not a
    field of ``ExportOptions``.
    """
    opts = ExportOptions(model_name_or_path=str(model_name_or_path), output_dir=str(output_dir),
                         width_mult=width_mult, **kwargs)
    return run_export(opts)


def _validate(opts: ExportOptions) -> None:
    if opts.model_type != "bert":
        raise OfaserveError(f"--model_type {opts.model_type!r} is not supported (only bert)")
    if int(opts.opset) < 14:
        raise OfaserveError(f"--opset must be >= 14 (got {opts.opset})")
    if opts.runtime not in RUNTIMES:
        raise OfaserveError(f"--runtime must be one of {', '.join(RUNTIMES)}, not '{opts.runtime}'")
    if opts.width_mult == AUTO:
        if opts.depth_mult is not None:
            raise OfaserveError("--width_mult auto chooses the depth too: drop --depth_mult")
        if (opts.max_metric_drop is None) == (opts.latency_budget_ms is None):
            raise OfaserveError("--width_mult auto needs exactly one of --max_metric_drop or --latency_budget_ms")
        if opts.max_metric_drop is not None and opts.max_metric_drop < 0:
            raise OfaserveError("--max_metric_drop must be >= 0")
        if opts.latency_budget_ms is not None and opts.latency_budget_ms <= 0:
            raise OfaserveError("--latency_budget_ms must be > 0")
        if opts.batch_size < 1 or opts.seq_len < 2:
            raise OfaserveError("--batch_size must be >= 1 and --seq_len >= 2")
        if opts.latency_budget_ms is not None and not opts.onnx_model and opts.runtime != Runtime.PADDLE:
            raise OfaserveError(f"--runtime {opts.runtime} needs the ONNX model (drop --no_onnx_model)")
    elif opts.max_metric_drop is not None or opts.latency_budget_ms is not None:
        raise OfaserveError("--max_metric_drop / --latency_budget_ms only apply with --width_mult auto")
    if not 0 < opts.tolerance < 1:
        raise OfaserveError("--tolerance must be in (0, 1)")
    check_parity_runtimes(opts.parity_runtimes)
    if opts.time_budget_s is not None and opts.time_budget_s <= 0:
        raise OfaserveError(f"--time_budget_s must be > 0 (got {opts.time_budget_s})")


@dataclass
class _Job:
    """What every phase of one export reads: the checked inputs, resolved once."""
    opts: ExportOptions
    src: Any
    out: Path
    max_seq: int
    dev: Split
    tokenizer: Any
    tok_path: Path
    pad_id: int
    check_budget: ExportCheckBudget | None = None
    later: LaterDev | None = None  # dev of the passes after the first (set by _check_dev)
    not_checked: tuple = ()  # runtimes left out by --parity_runtimes


def run_export(opts: ExportOptions) -> ExportManifest:
    """Load -> choose width -> build -> validate (parity, dev accuracy) -> precisions -> manifest,
    all inside a temp folder that replaces ``output_dir`` only when every check passed."""
    t_start = time.time()
    check_budget = ExportCheckBudget(opts.time_budget_s) if opts.time_budget_s else None
    with contextlib.ExitStack() as held:
        job = _prepare(opts, held)
        job.check_budget = check_budget
        return _export(job, t_start)


def _export(job: _Job, t_start: float) -> ExportManifest:
    """The phases of ``run_export``, run while it holds the outputs' locks."""
    from tqdm.auto import tqdm

    opts = job.opts
    sn = build_supernet(job.src)
    if opts.width_mult != AUTO:  # fail before any work for an untrained width or depth
        sn.check_subnet(opts.width_mult, opts.depth_mult or 1.0)
    # disable=None: no bar when stderr is not a terminal
    with tqdm(total=5, desc="export", disable=not opts.progress or None) as steps, \
            atomic_output_dir(job.out) as tmp:
        subnet, selection, prebuilt = _choose_subnet(job, sn, tmp)
        steps.set_postfix_str(f"{subnet.describe()}: slice + static + onnx")
        info = build_artifacts(sn, job.src, subnet.width.value, tmp, opts.opset, opts.onnx_model, opts.fuse_attention,
                               depth=subnet.depth.value)
        if prebuilt is not None:
            shutil.rmtree(tmp / ".select", ignore_errors=True)
        artifacts = {**info["artifacts"], **_stage_tokenizer(job, tmp)}
        steps.update(1)
        steps.set_postfix_str("parity")
        sub = load_sub_model(tmp / "sub_model")  # what users get: rebuilt from its config alone
        fns = _parity_runners(job, sn, sub, subnet, tmp, artifacts)
        parity, table = _check_parity(job, fns)
        steps.update(1)
        steps.set_postfix_str("dev accuracy")
        dev_m, dev_logits, table = _check_dev(job, fns, subnet, parity, table)
        steps.update(1)
        steps.set_postfix_str("precision variants")
        precisions: dict[str, Any] = {}
        if opts.onnx_model and opts.precisions:
            train = job.src.manifest.split("train") if opts.int8 else None
            later = job.later
            metric = job.src.spec.main_metric
            fp32_score = dev_m[metric] if later.index is None else score(job.src.spec, later.logits(dev_logits),
                                                                         later.dev.labels)[metric]
            precisions, extra = precision_variants(tmp, later.dev, job.tokenizer, job.src.spec,
                                                   later.logits(dev_logits), fp32_score,
                                                   train=train, pad_id=job.pad_id, int8=opts.int8,
                                                   int8_plain=opts.int8_plain,
                                                   fp16=opts.fp16, progress=opts.progress,
                                                   test=later.same_share(load_test(job.src)))
            if later.index is not None:  # every variant's gate ran on this dev subset
                precisions["fp32"]["dev_sentences"] = len(later.index)
            artifacts.update(extra)
        steps.update(1)
        manifest = _write_manifest(job, tmp, subnet, info, artifacts, parity, dev_m, precisions, selection,
                                   _params_record(info["sub_config"], job.src.config, sub), time.time() - t_start)
        steps.update(1)
    _extra_copies(opts, job.out)
    print(table)
    return manifest


def _prepare(opts: ExportOptions, held: contextlib.ExitStack) -> _Job:
    """Validate options and every output (the folder, the sub model copy, the static
    prefix's files) and lock the folders in ``held``, then load what every phase reads."""
    import paddle

    _validate(opts)
    if opts.n_gpu and opts.n_gpu > 1:
        log.info("--n_gpu %d: export runs in one process (slicing and conversion are not data parallel)",
                 opts.n_gpu)
    paddle.set_device("cpu")
    src_dir = Path(opts.model_name_or_path)
    out = check_output_dir(opts.output_dir, stage="export", overwrite=opts.overwrite, inputs=[src_dir])
    copies = _extra_sub_model(opts, out)
    for folder in copies:
        check_output_dir(folder, stage=SUB_MODEL_STAGE, overwrite=opts.overwrite, inputs=[src_dir, out])
    check_output_files(_extra_static_files(opts, out), overwrite=opts.overwrite)
    for folder in (out, *copies):
        held.enter_context(output_lock(folder))
    src = load_compress_output(src_dir, opts.model_type)
    max_seq = int(opts.max_seq_length or src.manifest.max_seq_length)
    if max_seq > int(src.config["max_position_embeddings"]):
        raise OfaserveError(f"--max_seq_length {max_seq} exceeds max_position_embeddings "
                            f"{src.config['max_position_embeddings']}")
    src.manifest.dev_scores()  # fail early when the compress results are incomplete
    # dev accuracy is compared with compress's, so tokenize exactly as compress did
    compress_seq = int(src.manifest.max_seq_length or max_seq)
    tokenizer, tok_path = load_tokenizer(src, compress_seq)
    return _Job(opts, src, out, max_seq, load_dev(src), tokenizer, tok_path,
                int(src.config.get("pad_token_id", 0)))


def _choose_subnet(job: _Job, sn, tmp: Path) -> tuple[Subnet, dict | None, Path | None]:
    """(subnet, selection record, prebuilt folder): the trained width and depth asked for,
    or the subnet ``--width_mult auto`` selects by accuracy drop or by latency measured here."""
    opts = job.opts
    selection = prebuilt = None
    if opts.width_mult == AUTO and opts.max_metric_drop is not None:
        subnet, selection = select_by_metric_drop(job.src, float(opts.max_metric_drop), opts.drop_bound)
        print(selection_table(selection))
    elif opts.width_mult == AUTO:
        subnet, selection, prebuilt = select_by_latency(
            sn, job.src, tmp / ".select", float(opts.latency_budget_ms), opts.batch_size, opts.seq_len,
            opts.runtime, opts.opset, opts.progress)
    else:
        subnet = Subnet.of(opts.width_mult, opts.depth_mult or 1.0)
    subnet = sn.check_subnet(subnet.width, subnet.depth)
    if selection:
        log.info("auto subnet: %s", subnet.describe(sn.num_layers))
    return subnet, selection, prebuilt


def _stage_tokenizer(job: _Job, tmp: Path) -> dict[str, str]:
    """Ship the tokenizer (and vocab) compress trained with: serving tokenizes identically."""
    (tmp / "tokenizer").mkdir()
    shutil.copy2(job.tok_path, tmp / "tokenizer" / "tokenizer.json")
    vocab_rel = job.src.manifest.tokenizer.get("vocab", "tokenizer/vocab.txt")
    if not (job.src.folder / vocab_rel).is_file():
        raise OfaserveError(f"{job.src.folder / vocab_rel} is missing: the compress output has no vocab.txt")
    shutil.copy2(job.src.folder / vocab_rel, tmp / "tokenizer" / "vocab.txt")
    return {"tokenizer": "tokenizer/tokenizer.json", "vocab": "tokenizer/vocab.txt"}


def _parity_runners(job: _Job, sn, sub, subnet: Subnet, tmp: Path,
                    artifacts: dict) -> dict[str, artifact_logits.LogitsFn]:
    """The supernet at ``subnet`` first (the reference), then every artifact through the
    runtime that will run it (only the ``--parity_runtimes`` ones, when given)."""
    w, d = subnet.width.value, subnet.depth.value
    makers: dict[str, Any] = {
        "supernet": lambda: (lambda i, t: sn.logits_numpy(i, t, w, d)),
        "sub_model": lambda: artifact_logits.dygraph(sub),
        "paddle_static": lambda: artifact_logits.paddle_inference(tmp / "static" / "model"),
    }
    if job.opts.onnx_model:
        makers["onnx"] = lambda: artifact_logits.onnxruntime(tmp / artifacts["onnx"])
        if "onnx_ort_fused" in artifacts:
            makers["onnx_ort_fused"] = lambda: artifact_logits.onnxruntime(tmp / artifacts["onnx_ort_fused"])
        makers["openvino_f32"] = lambda: artifact_logits.openvino(tmp / artifacts["onnx"], Precision.FP32)
        if "onnx_packed" in artifacts:
            makers["onnx_packed"] = lambda: artifact_logits.packed(Runtime.ONNXRUNTIME, tmp / artifacts["onnx_packed"], job.pad_id)
            makers["openvino_packed"] = lambda: artifact_logits.packed(Runtime.OPENVINO, tmp / artifacts["onnx_packed"], job.pad_id)
    keep = runtimes_to_check(list(makers), job.opts.parity_runtimes, _eval_runtime(job))
    job.not_checked = tuple(n for n in makers if n not in keep)
    return {name: makers[name]() for name in keep}


def _eval_runtime(job: _Job) -> str:
    return "onnx" if job.opts.onnx_model else "paddle_static"


def _check_parity(job: _Job, fns: dict) -> tuple[dict, str]:
    """Every runtime against the supernet on real dev sentences at the model's full length."""
    max_pos = int(job.src.config["max_position_embeddings"])
    inputs = parity_inputs(job.dev, load_tokenizer(job.src, max_pos)[0], job.pad_id, max_pos)
    parity, table, ok = run_parity(fns, inputs, job.opts.tolerance)
    parity["ok"] = ok
    if job.not_checked:
        parity["runtimes_not_checked"] = list(job.not_checked)
    return parity, table


def _check_dev(job: _Job, fns: dict, subnet: Subnet, parity: dict, table: str):
    """The dev score (main metric) through the served graph equals compress's; the packed graph
    gives the plain graph's outputs on every dev batch. Raises ParityError (nothing written)
    otherwise."""
    spec = job.src.spec
    metric = spec.main_metric
    compress_score = job.src.manifest.dev_scores()["subnets"][subnet]
    eval_name = _eval_runtime(job)
    t0 = time.perf_counter()
    dev_m, dev_logits = dev_eval(fns[eval_name], job.dev, job.tokenizer, spec)
    job.later = _later_dev(job, fns, time.perf_counter() - t0, parity)
    tolerance = dev_metric_tolerance(metric)
    parity["dev_score"] = {"metric": metric, "runtime": eval_name, "exported": dev_m[metric],
                           "compress": compress_score, "abs_diff": abs(dev_m[metric] - compress_score),
                           "tolerance": tolerance, "n": dev_m["n"]}
    dev_ok = abs(dev_m[metric] - compress_score) <= tolerance
    ok = parity["ok"]
    packed = next((n for n in ("onnx_packed", "openvino_packed") if n in fns), None)
    if packed:  # every dev batch packed differently: the packing itself is checked
        packed_m, packed_logits = dev_eval(fns[packed], job.later.dev, job.tokenizer, spec)
        plain = job.later.logits(dev_logits)
        diff = float(np.abs(packed_logits - plain).max())
        parity["packed_dev"] = {"max_abs_diff_vs_onnx": diff, metric: packed_m[metric], "runtime": packed,
                                "n": packed_m["n"]}
        if spec.type == TaskType.CLASSIFICATION:
            parity["packed_dev"]["predictions_agreeing"] = float(np.mean(
                predictions(spec, packed_logits) == predictions(spec, plain)))
        ok &= diff <= job.opts.tolerance
        subset = "" if job.later.index is None else f" ({packed_m['n']} sentences)"
        table += (f"\n\ndev set{subset} through {packed}: max abs output diff vs onnx {diff:.3e} "
                  f"({'ok' if diff <= job.opts.tolerance else 'FAIL'})")
    parity["ok"] = ok and dev_ok
    table += (f"\n\ndev {metric} through {eval_name}: {dev_m[metric]:.6f}, compress manifest: "
              f"{compress_score:.6f} ({'ok' if dev_ok else 'FAIL'})")
    if not parity["ok"]:
        raise ParityError(f"parity check failed for {subnet.describe()}: nothing was written to {job.out}",
                          table)
    return dev_m, dev_logits, table


def _later_dev(job: _Job, fns: dict, first_pass_s: float, parity: dict) -> LaterDev:
    """The dev set of the passes after the first: all of it, or under ``--time_budget_s``
    the subset the time left allows at the first pass's measured speed (``export.check_budget``)."""
    opts = job.opts
    if job.check_budget is None:
        return LaterDev(job.dev, None, None)

    test = load_test(job.src)
    passes = later_passes(packed=any(n in fns for n in ("onnx_packed", "openvino_packed")), fp16=opts.fp16,
                          bf16=capabilities.current().bf16, int8=opts.int8,
                          precisions=opts.onnx_model and opts.precisions,
                          test_ratio=len(test) / max(1, len(job.dev)) if test else 0.0)
    later = job.check_budget.later_dev(job.dev, first_pass_s, passes)
    parity["budget"] = later.record
    if later.index is not None:
        log.info("time budget: %s", later.record["cut"])
    return later


def _params_record(sub_cfg: dict, cfg: dict, sub_model) -> dict[str, Any]:
    """Parameter counts, analytic and measured on the sub model (they must agree)."""

    p_sub = count_params_config(sub_cfg)
    p_full = count_params_config(full_width_config(cfg))
    measured = count_params(sub_model)
    if measured["total"] != p_sub["total"] or measured["encoder"] != p_sub["encoder"]:
        raise OfaserveError(f"parameter count mismatch: model {measured}, analytic {p_sub}")
    return {"total": p_sub["total"], "encoder": p_sub["encoder"], "full_width_total": p_full["total"],
            "full_width_encoder": p_full["encoder"], "encoder_fraction": p_sub["encoder"] / p_full["encoder"],
            "total_fraction": p_sub["total"] / p_full["total"]}


def _write_manifest(job: _Job, tmp: Path, subnet: Subnet, info: dict, artifacts: dict, parity: dict,
                    dev_m: dict, precisions: dict, selection: dict | None, params: dict,
                    wall_s: float) -> ExportManifest:
    src, cfg, sub_cfg = job.src, job.src.config, info["sub_config"]
    layers = sub_cfg["layers"]
    manifest = ExportManifest(
        width_mult=subnet.width.value, width=subnet.width.key,
        depth_mult=subnet.depth.value, depth=subnet.depth.key, subnet=subnet.key, model_type="bert",
        labels=list(src.manifest.labels), max_seq_length=job.max_seq, do_lower_case=src.manifest.do_lower_case,
        pad_token_id=job.pad_id, vocab_size=int(cfg["vocab_size"]), num_labels=int(cfg["num_labels"]),
        artifacts=artifacts,
        files_sha256=files_sha256(tmp),  # `ofaserve repo` copies only files that still match
        sub_config={"num_layers": len(layers), "hidden_size": int(cfg["hidden_size"]),
                    "kept_layers": sub_cfg.get("kept_layers", list(range(len(layers)))),
                    "full_num_layers": int(cfg["num_hidden_layers"]),
                    "num_heads": [l["num_heads"] for l in layers], "head_dim": layers[0]["head_dim"],
                    "intermediate_size": [l["intermediate_size"] for l in layers],
                    "full_num_heads": int(cfg["num_attention_heads"]),
                    "full_intermediate_size": int(cfg["intermediate_size"])},
        paddle_static_files=info["paddle_static_files"],
        params=params,
        flops_b16_s128=flops(sub_cfg, 16, 128), flops_b16_s128_full_width=flops(full_width_config(cfg), 16, 128),
        source={"compress_dir": str(src.folder.resolve()), "checkpoint": str(src.ckpt.resolve()),
                "sha256": src.sha256, "task": src.manifest.task},
        task_spec=src.spec, dev_score={"metric": src.spec.main_metric,
                                       "value": src.manifest.dev_scores()["subnets"][subnet]},
        dev_metrics_exported=dev_m,
        onnx=info.get("onnx"), parity=parity, precisions=precisions, selection=selection,
        options={k: v for k, v in vars(job.opts).items() if k != "progress"},
        machine=machine_info(), wall_s=round(wall_s, 1), finished=now_iso())
    manifest.write(tmp)
    return manifest


def _extra_sub_model(opts: ExportOptions, out: Path) -> list[Path]:
    """The tutorial's --sub_model_output_dir, when it points elsewhere than <out>/sub_model."""
    if opts.sub_model_output_dir and Path(opts.sub_model_output_dir).resolve() != (out / "sub_model").resolve():
        return [Path(opts.sub_model_output_dir)]
    return []


def _extra_static_files(opts: ExportOptions, out: Path) -> list[Path]:
    """The files the tutorial's --static_sub_model PREFIX gets, when it is not <out>/static/model."""
    if not opts.static_sub_model or Path(opts.static_sub_model).resolve() == (out / "static" / "model").resolve():
        return []
    prefix = Path(opts.static_sub_model)
    return [prefix.with_name(prefix.name + ext) for ext in STATIC_SUFFIXES]


def _extra_copies(opts: ExportOptions, out: Path) -> None:
    """The copies ``_prepare`` checked: the sub model folder (swapped in whole, with a
    manifest that says an export made it) and the static files (all written, synced, then
    renamed)."""
    for folder in _extra_sub_model(opts, out):
        with atomic_output_dir(folder) as t:
            for f in (out / "sub_model").iterdir():
                shutil.copy2(f, t / f.name)
            write_manifest(t, SUB_MODEL_STAGE, export_dir=str(out.resolve()))
    wanted = {p.suffix: p for p in _extra_static_files(opts, out)}
    staged = []
    try:
        for f in sorted(p for p in (out / "static").iterdir() if p.suffix in wanted):
            dst = wanted[f.suffix]
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
            staged.append((tmp, dst))
            shutil.copy2(f, tmp)
            fsync_path(tmp)
        for tmp, dst in staged:
            os.replace(tmp, dst)
            fsync_path(dst.parent)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
