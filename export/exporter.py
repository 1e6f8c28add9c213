"""``export_subnet``: slice one trained width out of the OFA supernet and ship it as a
standalone sub model + Paddle static model + ONNX (+ precision variants), parity-checked.

Everything is written into a temp folder next to ``output_dir`` and swapped into place
only when every check passed (``atomic_output_dir``): a failed export never changes
what is at ``output_dir``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.artifacts import (OfaserveError, atomic_output_dir, check_output_dir, machine_info, now_iso,
                                read_manifest, sha256_file, write_manifest)

from ofaserve.export import onnx_tools, runners
from ofaserve.export.submodel import (count_params_config, flops, full_width_config, load_sub_model, save_sub_model,
                       sub_config_from_state)

log = logging.getLogger("ofaserve.export")

PARITY_TOL = 1e-4
DEV_ACC_TOL = 1e-6
INT8_MAX_DROP = 0.005
# Accuracy alone can hide churn: on the full-profile MiniLM, dynamic INT8 lost only 0.4 pt
# of dev accuracy at width 1.0 but changed 3.4% of predictions. Ship INT8 only when it
# also keeps >= 98% of the FP32 predictions.
INT8_MIN_AGREEMENT = 0.98
RUNTIMES = ("openvino", "onnxruntime", "paddle")


class ParityError(OfaserveError):
    """An exported artifact disagrees with the supernet; ``table`` says where."""

    def __init__(self, message: str, table: str):
        super().__init__(message)
        self.table = table


@dataclass
class ExportOptions:
    model_name_or_path: str
    output_dir: str
    width_mult: float | str = 1.0
    model_type: str = "bert"
    max_seq_length: int | None = None
    sub_model_output_dir: str | None = None
    static_sub_model: str | None = None
    onnx_model: bool = True
    opset: int = 14
    fuse_attention: bool = True
    precisions: bool = True
    int8: bool = True
    max_accuracy_drop: float | None = None
    latency_budget_ms: float | None = None
    batch_size: int = 16
    seq_len: int = 128
    runtime: str = "openvino"
    n_gpu: int = 1
    tolerance: float = PARITY_TOL
    overwrite: bool = False
    progress: bool = True


@contextlib.contextmanager
def _quiet_logs(level: int):
    """Silence third-party log records up to ``level`` (and their stdout prints) for a block."""
    logging.disable(level)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


# ============================================================================ inputs
@dataclass
class Source:
    folder: Path
    manifest: dict
    config: dict
    state: dict
    ckpt: Path
    sha256: str


def load_compress_output(folder: str | os.PathLike, model_type: str = "bert") -> Source:
    """Read and verify a compress output: stage, model type, checkpoint integrity, shapes."""
    import paddle

    from ofaserve.compress.bert import build_classifier

    folder = Path(folder)
    manifest = read_manifest(folder, stage="compress")
    if model_type != "bert":
        raise OfaserveError(f"--model_type {model_type!r} is not supported (only bert)")
    if manifest.get("model_type", "bert") != model_type:
        raise OfaserveError(f"{folder} holds a {manifest.get('model_type')!r} model, not {model_type!r}")
    for key in ("model_config", "checkpoints", "width_mult_list", "labels"):
        if key not in manifest:
            raise OfaserveError(f"{folder}/manifest.json lacks {key!r}: re-run `ofaserve compress`")
    rel = manifest["checkpoints"].get("supernet")
    ckpt = folder / (rel or "supernet/model_state.pdparams")
    if not ckpt.is_file():
        raise OfaserveError(f"the supernet checkpoint {ckpt} is missing: re-run `ofaserve compress`")
    digest = sha256_file(ckpt)
    want = (manifest.get("checkpoint_sha256") or {}).get("supernet")
    if want and want != digest:
        raise OfaserveError(f"{ckpt} does not match the sha256 recorded by compress (corrupted or replaced): "
                            f"re-run `ofaserve compress`")
    try:
        state = paddle.load(str(ckpt))
    except Exception as e:
        raise OfaserveError(f"cannot load the supernet checkpoint {ckpt}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or not state:
        raise OfaserveError(f"{ckpt} does not hold a model state dict")
    config = dict(manifest["model_config"])
    model = build_classifier(config)
    want_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want_shapes) - set(state))
    bad = [k for k in want_shapes if k in state and tuple(np.shape(state[k])) != want_shapes[k]]
    if missing or bad:
        raise OfaserveError(f"{ckpt} does not fit the manifest's model_config "
                            f"(missing {missing[:3]}, wrong shapes {bad[:3]})")
    return Source(folder, manifest, config, {k: np.asarray(state[k]) for k in want_shapes}, ckpt, digest)


def build_supernet(src: Source):
    from ofaserve.compress.bert import build_classifier
    from ofaserve.compress.ofa import OfaSupernet

    model = build_classifier(src.config)
    model.set_state_dict(src.state)
    model.eval()
    sn = OfaSupernet(model, src.manifest["width_mult_list"])
    sn.eval()
    return sn


def load_dev(src: Source):
    from ofaserve.compress.tasks import load_task

    opts = src.manifest.get("options") or {}
    task = src.manifest.get("task") or opts.get("task_name")
    try:
        data = load_task(task if task != "csv" else opts.get("task_name"), opts.get("train_file"),
                         opts.get("dev_file"), None)
    except OfaserveError as e:
        raise OfaserveError(f"cannot load the dev sentences the compress stage used: {e}") from e
    if list(data.labels) != list(src.manifest["labels"]):
        raise OfaserveError(f"the task's labels {data.labels} differ from the compress manifest's "
                            f"{src.manifest['labels']}")
    return data.split("dev")


def load_tokenizer(src: Source, max_seq_length: int):
    from tokenizers import Tokenizer

    tok_rel = (src.manifest.get("tokenizer") or {}).get("tokenizer_json", "tokenizer/tokenizer.json")
    path = src.folder / tok_rel
    if not path.is_file():
        raise OfaserveError(f"{path} is missing: the compress output has no tokenizer")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise OfaserveError(f"cannot read the tokenizer {path}: {e}") from e
    tok.no_padding()
    tok.enable_truncation(max_length=int(max_seq_length))
    return tok, path


# ============================================================================ slicing
def slice_width(sn, src: Source, width: float) -> tuple[dict, dict]:
    """PaddleSlim's ``OFA.export`` (inside the compat patches) -> (sub config, sliced weights)."""
    from ofaserve.compress import paddleslim_compat as compat
    from ofaserve.compress.bert import build_classifier

    width = sn.check_width(width)
    origin = build_classifier(src.config)
    origin.set_state_dict(src.state)
    origin.eval()
    quiet = io.StringIO()  # paddleslim prints one line per parameter
    with compat.patched(), contextlib.redirect_stdout(quiet), warnings.catch_warnings():
        # OFA.export reloads the full-width state last; paddle warns (and skips) every sliced tensor
        warnings.filterwarnings("ignore", message="Skip loading for")
        sub = sn.ofa.export(sn.net_config(width), input_shapes=[[1, 8], [1, 8]],
                            input_dtypes=["int64", "int64"], origin_model=origin)
    state = {k: v.numpy().astype(np.float32) for k, v in sub.state_dict().items()}
    cfg = sub_config_from_state(src.config, state, width)
    # Cross-check what SuperLinear kept against the prefix rule: the first int(w*heads) heads.
    heads, hd = int(src.config["num_attention_heads"]), int(src.config["hidden_size"]) // int(
        src.config["num_attention_heads"])
    for i, layer in enumerate(cfg["layers"]):
        if layer["num_heads"] != int(heads * width):
            raise OfaserveError(f"layer {i}: OFA.export kept {layer['num_heads']} heads but training ran "
                                f"int({heads}*{width}) = {int(heads * width)} (hidden {hd} per head)")
        p = f"bert.encoder.layers.{i}."
        for name in ("self_attn.q_proj.weight", "linear1.weight"):
            full, cut = src.state[p + name], state[p + name]
            if not np.array_equal(full[:, : cut.shape[1]], cut):
                raise OfaserveError(f"OFA.export's {p + name} is not the leading slice of the supernet")
    return cfg, state


def build_artifacts(sn, src: Source, width: float, folder: Path, opset: int, onnx_model: bool = True,
                    fuse: bool = True) -> dict[str, Any]:
    """sub_model/, static/, onnx/ for one width in ``folder``. Returns info for the manifest."""
    import onnx
    import paddle
    from paddle.static import InputSpec

    t0 = time.time()
    cfg, state = slice_width(sn, src, width)
    save_sub_model(folder / "sub_model", cfg, state)
    model = load_sub_model(folder / "sub_model")  # what users get: rebuilt from config, no OFA patch
    info: dict[str, Any] = {"sub_config": cfg, "artifacts": {"sub_model": "sub_model"}}

    static_prefix = folder / "static" / "model"
    spec = [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "token_type_ids")]
    try:
        static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
        paddle.jit.save(static, str(static_prefix))
    except Exception as e:
        raise OfaserveError(f"paddle.jit.save of the sub model failed: {type(e).__name__}: {e}") from e
    model_file = static_prefix.with_suffix(".json")
    if not model_file.is_file():
        model_file = static_prefix.with_suffix(".pdmodel")  # paddle 2.6
    info["artifacts"]["paddle_static"] = "static/model"
    info["paddle_static_files"] = [f"static/{model_file.name}", "static/model.pdiparams"]
    log.info("width %s: sub model + static model written (%.1fs)", width, time.time() - t0)
    if not onnx_model:
        return info

    onnx_dir = folder / "onnx"
    raw = onnx_dir / "paddle2onnx_raw.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_tools.paddle_to_onnx(model_file, static_prefix.with_suffix(".pdiparams"), raw, opset)
    proto = onnx.load(str(raw))
    onnx_tools.finalize_io(proto)
    raw_proto = onnx.ModelProto()
    raw_proto.CopyFrom(proto)
    final = onnx_dir / "model.onnx"
    rewrite: dict[str, Any]
    try:
        rewrite = onnx_tools.rewrite_attention(proto, int(src.config.get("pad_token_id", 0)))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(final))
        rewrite["applied"] = True
    except OfaserveError as e:  # unexpected graph: ship paddle2onnx's own graph, say why
        log.warning("attention rewrite skipped (%s): shipping the unfused paddle2onnx graph", e)
        onnx.save(raw_proto, str(final))
        rewrite = {"applied": False, "reason": str(e)}
    raw.unlink()
    info["artifacts"]["onnx"] = "onnx/model.onnx"
    if rewrite.get("applied"):
        packed = onnx.ModelProto()
        packed.CopyFrom(proto)
        try:
            onnx_tools.packed_variant(packed, int(src.config["hidden_size"]), int(src.config.get("pad_token_id", 0)))
            onnx.checker.check_model(packed)
            onnx.save(packed, str(onnx_dir / "model_packed.onnx"))
            info["artifacts"]["onnx_packed"] = "onnx/model_packed.onnx"
        except OfaserveError as e:  # an optimisation, not the contract: ship without it, say why
            log.warning("packed variant skipped (%s)", e)
    info["onnx"] = {"opset": int(opset), "rewrite": rewrite, "inputs": list(onnx_tools.INPUTS),
                    "output": onnx_tools.OUTPUT}
    if fuse and rewrite.get("applied"):
        heads = cfg["layers"][0]["num_heads"]
        uniform = all(l["num_heads"] == heads for l in cfg["layers"])
        try:
            with _quiet_logs(logging.WARNING):  # the optimizer's INFO chatter + a benign hidden-size warning
                counts = onnx_tools.fuse_for_ort(final, onnx_dir / "model_ort_fused.onnx",
                                                 heads if uniform else 0, 0, onnx_dir)
            n_att = counts.get("Attention", 0)
            info["onnx"]["ort_fusion"] = {"attention_fused": n_att, "layers": len(cfg["layers"]), "ops": counts}
            if n_att == len(cfg["layers"]):
                info["artifacts"]["onnx_ort_fused"] = "onnx/model_ort_fused.onnx"
            else:
                (onnx_dir / "model_ort_fused.onnx").unlink(missing_ok=True)
                info["onnx"]["ort_fusion"]["shipped"] = False
                log.warning("ORT fused %d of %d attention blocks: fused model not shipped", n_att,
                            len(cfg["layers"]))
        except Exception as e:  # the optimizer is best effort; the plain ONNX is the contract
            log.warning("ONNX Runtime BERT fusion failed (%s): shipping only the plain ONNX", e)
            info["onnx"]["ort_fusion"] = {"attention_fused": 0, "error": str(e)}
    log.info("width %s: ONNX written (%.1fs)", width, time.time() - t0)
    return info


# ============================================================================ parity
def parity_inputs(texts: list[str], tokenizer, pad_id: int, max_positions: int) -> dict[str, tuple]:
    """Real dev sentences at 16 x 128 and 3 x 37 (capped at the model's positions), with padding."""
    encs = [tokenizer.encode(t).ids for t in texts[:512]]
    if not encs:
        raise OfaserveError("no dev sentences to check parity on")
    order = sorted(range(len(encs)), key=lambda i: len(encs[i]))
    out = {}
    for b, s in ((16, 128), (3, 37)):
        s = min(s, max_positions)
        if b == 3:
            pick = [order[-1], order[0], order[len(order) // 2]]  # longest (truncated), shortest, median
        else:
            pick = ([order[-1 - i] for i in range(min(b // 2, len(order)))]  # the longest: late positions
                    + [i % len(encs) for i in range(b - min(b // 2, len(order)))])
        ids = np.full((b, s), pad_id, dtype=np.int64)
        for r, i in enumerate(pick):
            row = encs[i][:s]
            ids[r, : len(row)] = row
        types = np.zeros_like(ids)
        out[f"{b}x{s}"] = (ids, types)
    return out


def run_parity(fns: dict[str, runners.LogitsFn], inputs: dict[str, tuple], tol: float) -> tuple[dict, str, bool]:
    """Every runtime vs the first (the supernet at this width)."""
    ref_name = next(iter(fns))
    result: dict[str, Any] = {"reference": ref_name, "tolerance": tol, "shapes": {}}
    ok = True
    rows = []
    for shape, (ids, types) in inputs.items():
        ref = fns[ref_name](ids, types)
        entry = {"pad_fraction": float(np.mean(ids == 0)), "max_abs_diff": {}, "argmax_agree": {}}
        for name, fn in fns.items():
            if name == ref_name:
                continue
            got = fn(ids, types)
            if got.shape != ref.shape:
                diff = float("inf")
            else:
                diff = float(np.abs(got - ref).max())
            agree = float(np.mean(got.argmax(-1) == ref.argmax(-1))) if got.shape == ref.shape else 0.0
            entry["max_abs_diff"][name] = diff
            entry["argmax_agree"][name] = agree
            good = diff <= tol
            ok &= good
            rows.append(f"| {shape} | {name} | {diff:.3e} | {agree:.3f} | {'ok' if good else 'FAIL'} |")
        result["shapes"][shape] = entry
    table = "\n".join([f"| shape | runtime (vs {ref_name}) | max abs logits diff | argmax agree | <= {tol:g} |",
                       "|---|---|---|---|---|"] + rows)
    result["ok"] = ok
    result["max_abs_diff"] = max((d for e in result["shapes"].values() for d in e["max_abs_diff"].values()),
                                 default=0.0)
    return result, table, ok


# ============================================================================ precisions
def _dev_eval(fn, dev, tokenizer) -> tuple[dict, np.ndarray]:
    from ofaserve.compress.train import metrics, predict

    logits = predict(fn, dev[0], dev[1], tokenizer)
    return metrics(logits, dev[1]), logits


def precision_variants(folder: Path, dev, tokenizer, fp32_logits: np.ndarray, fp32_acc: float,
                       int8: bool = True) -> tuple[dict, dict]:
    """FP16 ONNX (GPU target), OpenVINO bf16, ORT dynamic INT8: dev accuracy vs FP32."""
    import onnx

    results: dict[str, Any] = {"fp32": {"accuracy": fp32_acc, "runtime": "onnxruntime"}}
    artifacts: dict[str, str] = {}
    fp32_pred = fp32_logits.argmax(-1)

    def record(name, fn, extra=None):
        m, logits = _dev_eval(fn, dev, tokenizer)
        r = {"accuracy": m["accuracy"], "f1": m["f1"], "delta_vs_fp32": m["accuracy"] - fp32_acc,
             "agreement_with_fp32": float(np.mean(logits.argmax(-1) == fp32_pred)),
             "max_abs_logits_diff_vs_fp32": float(np.abs(logits - fp32_logits).max())}
        r.update(extra or {})
        results[name] = r
        return r

    src = folder / "onnx" / "model.onnx"
    # -- FP16 ONNX (for GPUs; checked here on the CPU EP)
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        fp16_path = folder / "onnx" / "model_fp16.onnx"
        proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(proto, str(fp16_path))
        try:
            record("onnx_fp16", runners.onnxruntime(fp16_path), {"runtime": "onnxruntime-cpu", "target": "gpu"})
        except Exception as e:  # CPU EP may lack fp16 kernels: fall back to OpenVINO running it
            log.info("ORT CPU cannot run the FP16 model (%s); measuring with OpenVINO f32 on fp16 weights", e)
            record("onnx_fp16", runners.openvino(fp16_path, "f32"),
                   {"runtime": "openvino-f32 (fp16 weights; fp16 activations not emulated)", "target": "gpu"})
        artifacts["onnx_fp16"] = "onnx/model_fp16.onnx"
    except Exception as e:
        log.warning("FP16 conversion failed: %s", e)
        results["onnx_fp16"] = {"error": str(e)}
    # -- OpenVINO bf16 (this CPU has avx512_bf16): a deliberate, accuracy-checked option
    try:
        record("openvino_bf16", runners.openvino(src, "bf16"), {"runtime": "openvino", "artifact": "onnx"})
    except Exception as e:
        log.warning("OpenVINO bf16 evaluation failed: %s", e)
        results["openvino_bf16"] = {"error": str(e)}
    # -- ONNX Runtime dynamic INT8: shipped only within 0.5 points of FP32 and >= 98% agreement
    if int8:
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q_path = folder / "onnx" / "model_int8.onnx"
            with _quiet_logs(logging.INFO):  # quantize_dynamic logs one INFO line per tensor
                quantize_dynamic(str(src), str(q_path), weight_type=QuantType.QInt8)
            r = record("onnx_int8_dynamic", runners.onnxruntime(q_path), {"runtime": "onnxruntime"})
            reasons = []
            if r["delta_vs_fp32"] < -INT8_MAX_DROP:
                reasons.append(f"dev accuracy drop {-r['delta_vs_fp32']:.4f} > {INT8_MAX_DROP}")
            if r["agreement_with_fp32"] < INT8_MIN_AGREEMENT:
                reasons.append(f"agrees with FP32 on {r['agreement_with_fp32']:.2%} of dev < {INT8_MIN_AGREEMENT:.0%}")
            r.update(shipped=not reasons, max_drop=INT8_MAX_DROP, min_agreement=INT8_MIN_AGREEMENT)
            if reasons:
                r["not_shipped_because"] = "; ".join(reasons)
                q_path.unlink()
                log.info("INT8 not shipped: %s", r["not_shipped_because"])
            else:
                artifacts["onnx_int8"] = "onnx/model_int8.onnx"
        except Exception as e:
            log.warning("INT8 quantization failed: %s", e)
            results["onnx_int8_dynamic"] = {"error": str(e)}
    return results, artifacts


# ============================================================================ selection
def latency_inputs(vocab_size: int, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(5, max(6, vocab_size), size=(batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 2, 3
    return ids, np.zeros_like(ids)


def measure_interleaved(fns: dict[str, Any], vocab_size: int, batch: int, seq: int, budget_s: float = 3.0,
                        min_rounds: int = 5, max_rounds: int = 50) -> dict[str, dict[str, float]]:
    """Median/min ms per function, measured round-robin (one call of each per round) so that a
    load change on a shared machine hits every width alike instead of biasing one."""
    ids, types = latency_inputs(vocab_size, batch, seq)
    for fn in fns.values():
        for _ in range(2):
            fn(ids, types)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (rounds < max_rounds and time.perf_counter() - start < budget_s * len(fns)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(ids, types)
            times[k].append((time.perf_counter() - t) * 1000)
        rounds += 1
    return {k: {"median_ms": float(statistics.median(v)), "min_ms": float(min(v)), "runs": len(v)}
            for k, v in times.items()}


def accuracy_table(src: Source) -> dict[str, Any]:
    from ofaserve.compress.ofa import width_key

    res = src.manifest.get("results") or {}
    teacher = ((res.get("teacher") or {}).get("dev") or {}).get("accuracy")
    widths = {}
    for w in sorted(float(x) for x in src.manifest["width_mult_list"]):
        r = ((res.get("widths") or {}).get(width_key(w)) or {}).get("dev")
        if r is None:
            raise OfaserveError(f"the compress manifest has no dev result for width {width_key(w)}")
        widths[w] = r["accuracy"]
    if teacher is None:
        raise OfaserveError("the compress manifest has no teacher dev accuracy")
    return {"teacher": teacher, "widths": widths}


def select_by_accuracy(src: Source, max_drop: float) -> tuple[float, dict]:
    from ofaserve.compress.ofa import width_key

    acc = accuracy_table(src)
    rows = [{"width": width_key(w), "width_mult": w, "dev_accuracy": a,
             "drop_vs_teacher": acc["teacher"] - a, "within": acc["teacher"] - a <= max_drop + 1e-12}
            for w, a in acc["widths"].items()]
    ok = [r for r in rows if r["within"]]
    sel = {"mode": "max_accuracy_drop", "max_accuracy_drop": max_drop, "teacher_dev_accuracy": acc["teacher"],
           "table": rows}
    if not ok:
        raise OfaserveError(f"no trained width is within {max_drop} dev accuracy of the teacher "
                            f"({acc['teacher']:.4f}): " + ", ".join(f"{r['width']}: {r['dev_accuracy']:.4f}"
                                                                     for r in rows))
    chosen = min(ok, key=lambda r: r["width_mult"])
    sel["chosen"] = chosen["width"]
    return chosen["width_mult"], sel


def select_by_latency(sn, src: Source, scratch: Path, budget_ms: float, batch: int, seq: int, runtime: str,
                      opset: int, progress: bool = True) -> tuple[float, dict, Path]:
    from tqdm.auto import tqdm

    from ofaserve.compress.ofa import width_key

    if runtime not in RUNTIMES:
        raise OfaserveError(f"--runtime must be one of {RUNTIMES}, not {runtime!r}")
    if seq > int(src.config["max_position_embeddings"]):
        raise OfaserveError(f"--seq_len {seq} exceeds the model's max_position_embeddings "
                            f"{src.config['max_position_embeddings']}")
    acc = accuracy_table(src)
    fns = {}
    for w in tqdm(sorted(acc["widths"], reverse=True), desc="build per width", disable=not progress or None):
        folder = scratch / f"w{width_key(w)}"
        info = build_artifacts(sn, src, w, folder, opset, onnx_model=runtime != "paddle", fuse=runtime == "onnxruntime")
        fns[w] = runners.make(runtime, folder, info["artifacts"])
    log.info("measuring %s latency of %d widths at %dx%d (round robin)", runtime, len(fns), batch, seq)
    lat = measure_interleaved(fns, int(src.config["vocab_size"]), batch, seq)
    rows = []
    for w, l in lat.items():
        rows.append({"width": width_key(w), "width_mult": w, "dev_accuracy": acc["widths"][w],
                     "latency_ms": round(l["median_ms"], 3), "latency_min_ms": round(l["min_ms"], 3),
                     "runs": l["runs"], "meets_budget": l["median_ms"] <= budget_ms})
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    if load is not None and load > (os.cpu_count() or 1):
        log.warning("load average %.1f > %d cores: latencies are inflated by other processes", load,
                    os.cpu_count() or 1)
    sel = {"mode": "latency_budget", "latency_budget_ms": budget_ms, "batch_size": batch, "seq_len": seq,
           "runtime": runtime, "machine": machine_info(), "load_average_1min": load,
           "threads": runners.threads(), "teacher_dev_accuracy": acc["teacher"], "table": rows}
    print(selection_table(sel))
    chosen = choose_within_budget(rows, budget_ms, f"on {runtime} at {batch}x{seq}")
    sel["chosen"] = chosen["width"]
    return chosen["width_mult"], sel, scratch / f"w{chosen['width']}"


def choose_within_budget(rows: list[dict], budget_ms: float, where: str = "") -> dict:
    """The most accurate width whose latency meets the budget; ties go to the narrower width."""
    ok = [r for r in rows if r["latency_ms"] <= budget_ms]
    if not ok:
        raise OfaserveError(f"no trained width meets {budget_ms} ms {where} "
                            f"(fastest: {min(r['latency_ms'] for r in rows):.1f} ms)")
    return max(ok, key=lambda r: (r["dev_accuracy"], -r["width_mult"]))


def selection_table(sel: dict) -> str:
    if sel["mode"] == "latency_budget":
        head = (f"| width | dev acc | {sel['runtime']} ms ({sel['batch_size']}x{sel['seq_len']}) | "
                f"<= {sel['latency_budget_ms']} ms |")
        rows = [f"| {r['width']} | {r['dev_accuracy']:.4f} | {r['latency_ms']:.1f} | "
                f"{'yes' if r['meets_budget'] else 'no'} |" for r in sel["table"]]
    else:
        head = f"| width | dev acc | drop vs teacher | <= {sel['max_accuracy_drop']} |"
        rows = [f"| {r['width']} | {r['dev_accuracy']:.4f} | {r['drop_vs_teacher']:+.4f} | "
                f"{'yes' if r['within'] else 'no'} |" for r in sel["table"]]
    return "\n".join([head, "|---|---|---|---|"] + rows)


# ============================================================================ main entry
def export_subnet(model_name_or_path: str | os.PathLike, output_dir: str | os.PathLike,
                  width_mult: float | str = 1.0, **kwargs: Any) -> dict[str, Any]:
    """Export one width of a compress output to ``output_dir``; returns the export manifest.

    ``width_mult`` is a trained width, or ``"auto"`` with ``max_accuracy_drop`` (narrowest
    width within that dev accuracy of the teacher) or ``latency_budget_ms`` (most accurate
    width meeting the budget on ``runtime`` at ``batch_size x seq_len``, measured here).
    Other keyword arguments: the fields of ``ExportOptions``.
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
        raise OfaserveError(f"--runtime must be one of {RUNTIMES}, not {opts.runtime!r}")
    if isinstance(opts.width_mult, str) and opts.width_mult != "auto":
        try:
            opts.width_mult = float(opts.width_mult)
        except ValueError:
            raise OfaserveError(f"--width_mult must be a number or 'auto', not {opts.width_mult!r}") from None
    if opts.width_mult == "auto":
        if (opts.max_accuracy_drop is None) == (opts.latency_budget_ms is None):
            raise OfaserveError("--width_mult auto needs exactly one of --max_accuracy_drop or --latency_budget_ms")
        if opts.max_accuracy_drop is not None and opts.max_accuracy_drop < 0:
            raise OfaserveError("--max_accuracy_drop must be >= 0")
        if opts.latency_budget_ms is not None and opts.latency_budget_ms <= 0:
            raise OfaserveError("--latency_budget_ms must be > 0")
        if opts.batch_size < 1 or opts.seq_len < 2:
            raise OfaserveError("--batch_size must be >= 1 and --seq_len >= 2")
        if opts.latency_budget_ms is not None and not opts.onnx_model and opts.runtime != "paddle":
            raise OfaserveError(f"--runtime {opts.runtime} needs the ONNX model (drop --no_onnx_model)")
    elif not 0 < float(opts.width_mult) <= 1:
        raise OfaserveError(f"--width_mult must be in (0, 1] or 'auto' (got {opts.width_mult})")
    elif opts.max_accuracy_drop is not None or opts.latency_budget_ms is not None:
        raise OfaserveError("--max_accuracy_drop / --latency_budget_ms only apply with --width_mult auto")
    if not 0 < opts.tolerance < 1:
        raise OfaserveError("--tolerance must be in (0, 1)")


def run_export(opts: ExportOptions) -> dict[str, Any]:
    import paddle
    from tqdm.auto import tqdm

    from ofaserve.compress.ofa import width_key

    _validate(opts)
    if opts.n_gpu and opts.n_gpu > 1:
        log.info("--n_gpu %d: export runs in one process (slicing and conversion are not data parallel)",
                 opts.n_gpu)
    paddle.set_device("cpu")
    t_start = time.time()
    src_dir = Path(opts.model_name_or_path)
    out = Path(opts.output_dir)
    if out.resolve() == src_dir.resolve():
        raise OfaserveError("--output_dir must differ from --model_name_or_path (the compress output)")
    try:
        out = check_output_dir(out, stage="export", overwrite=opts.overwrite)
        probe = Path(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=out.parent))
        probe.rmdir()
    except OSError as e:
        raise OfaserveError(f"cannot write the output dir {out}: {e.strerror or e}") from e
    src = load_compress_output(src_dir, opts.model_type)
    cfg = src.config
    max_seq = int(opts.max_seq_length or src.manifest.get("max_seq_length") or 128)
    if max_seq > int(cfg["max_position_embeddings"]):
        raise OfaserveError(f"--max_seq_length {max_seq} exceeds max_position_embeddings "
                            f"{cfg['max_position_embeddings']}")
    acc = accuracy_table(src)  # fail early when the compress results are incomplete
    sn = build_supernet(src)
    if opts.width_mult != "auto":
        sn.check_width(float(opts.width_mult))  # fail before any work for an untrained width
    dev = load_dev(src)
    # dev accuracy is compared with compress's, so tokenize exactly as compress did
    compress_seq = int(src.manifest.get("max_seq_length") or max_seq)
    tokenizer, tok_path = load_tokenizer(src, compress_seq)
    pad_id = int(cfg.get("pad_token_id", 0))

    # disable=None: no bar when stderr is not a terminal
    with tqdm(total=5, desc="export", disable=not opts.progress or None) as steps, atomic_output_dir(out) as tmp:
        selection = None
        prebuilt = None
        if opts.width_mult == "auto" and opts.max_accuracy_drop is not None:
            width, selection = select_by_accuracy(src, float(opts.max_accuracy_drop))
            print(selection_table(selection))
        elif opts.width_mult == "auto":
            width, selection, prebuilt = select_by_latency(
                sn, src, tmp / ".select", float(opts.latency_budget_ms), opts.batch_size, opts.seq_len,
                opts.runtime, opts.opset, opts.progress)
        else:
            width = float(opts.width_mult)
        width = sn.check_width(width)
        if selection:
            log.info("auto width: %s", width_key(width))
        steps.set_postfix_str(f"width {width_key(width)}: slice + static + onnx")
        info = build_artifacts(sn, src, width, tmp, opts.opset, opts.onnx_model, opts.fuse_attention)
        if prebuilt is not None:
            shutil.rmtree(tmp / ".select", ignore_errors=True)
        steps.update(1)

        # ---------------------------------------------------------------- tokenizer
        (tmp / "tokenizer").mkdir()
        shutil.copy2(tok_path, tmp / "tokenizer" / "tokenizer.json")
        vocab_rel = (src.manifest.get("tokenizer") or {}).get("vocab", "tokenizer/vocab.txt")
        if not (src.folder / vocab_rel).is_file():
            raise OfaserveError(f"{src.folder / vocab_rel} is missing: the compress output has no vocab.txt")
        shutil.copy2(src.folder / vocab_rel, tmp / "tokenizer" / "vocab.txt")
        artifacts = dict(info["artifacts"])
        artifacts.update({"tokenizer": "tokenizer/tokenizer.json", "vocab": "tokenizer/vocab.txt"})

        # ---------------------------------------------------------------- parity
        steps.set_postfix_str("parity")
        sub = load_sub_model(tmp / "sub_model")
        fns: dict[str, runners.LogitsFn] = {
            "supernet": lambda i, t: sn.logits_numpy(i, t, width),
            "sub_model": runners.dygraph(sub),
            "paddle_static": runners.paddle_inference(tmp / "static" / "model"),
        }
        if opts.onnx_model:
            fns["onnx"] = runners.onnxruntime(tmp / artifacts["onnx"])
            if "onnx_ort_fused" in artifacts:
                fns["onnx_ort_fused"] = runners.onnxruntime(tmp / artifacts["onnx_ort_fused"])
            fns["openvino_f32"] = runners.openvino(tmp / artifacts["onnx"], "f32")
            if "onnx_packed" in artifacts:
                fns["onnx_packed"] = runners.packed("onnxruntime", tmp / artifacts["onnx_packed"], pad_id)
                fns["openvino_packed"] = runners.packed("openvino", tmp / artifacts["onnx_packed"], pad_id)
        max_pos = int(cfg["max_position_embeddings"])
        inputs = parity_inputs(dev[0], load_tokenizer(src, max_pos)[0], pad_id, max_pos)
        parity, table, ok = run_parity(fns, inputs, opts.tolerance)
        steps.update(1)

        # ---------------------------------------------------------------- dev accuracy
        steps.set_postfix_str("dev accuracy")
        compress_acc = acc["widths"].get(width)
        eval_name = "onnx" if opts.onnx_model else "paddle_static"
        dev_m, dev_logits = _dev_eval(fns[eval_name], dev, tokenizer)
        parity["dev_accuracy"] = {"runtime": eval_name, "exported": dev_m["accuracy"], "compress": compress_acc,
                                  "abs_diff": abs(dev_m["accuracy"] - compress_acc), "tolerance": DEV_ACC_TOL,
                                  "n": dev_m["n"]}
        dev_ok = abs(dev_m["accuracy"] - compress_acc) <= DEV_ACC_TOL
        if "onnx_packed" in fns:  # every dev batch packed differently: the packing itself is checked
            packed_m, packed_logits = _dev_eval(fns["onnx_packed"], dev, tokenizer)
            diff = float(np.abs(packed_logits - dev_logits).max())
            parity["packed_dev"] = {"max_abs_diff_vs_onnx": diff, "accuracy": packed_m["accuracy"],
                                    "predictions_agreeing": float(np.mean(packed_logits.argmax(-1)
                                                                          == dev_logits.argmax(-1)))}
            ok &= diff <= opts.tolerance
            table += (f"\n\ndev set through onnx_packed: max abs logits diff vs onnx {diff:.3e} "
                      f"({'ok' if diff <= opts.tolerance else 'FAIL'})")
        parity["ok"] = ok and dev_ok
        table += (f"\n\ndev accuracy through {eval_name}: {dev_m['accuracy']:.6f}, compress manifest: "
                  f"{compress_acc:.6f} ({'ok' if dev_ok else 'FAIL'})")
        if not parity["ok"]:
            raise ParityError(f"parity check failed for width {width_key(width)}: nothing was written to {out}",
                              table)
        steps.update(1)

        # ---------------------------------------------------------------- precision variants
        steps.set_postfix_str("precision variants")
        precisions: dict[str, Any] = {}
        if opts.onnx_model and opts.precisions:
            precisions, extra = precision_variants(tmp, dev, tokenizer, dev_logits, dev_m["accuracy"], opts.int8)
            artifacts.update(extra)
        steps.update(1)

        # ---------------------------------------------------------------- size + manifest
        sub_cfg = info["sub_config"]
        p_sub = count_params_config(sub_cfg)
        p_full = count_params_config(full_width_config(cfg))
        from ofaserve.compress.bert import count_params
        measured = count_params(sub)
        if measured["total"] != p_sub["total"] or measured["encoder"] != p_sub["encoder"]:
            raise OfaserveError(f"parameter count mismatch: model {measured}, analytic {p_sub}")
        params = {"total": p_sub["total"], "encoder": p_sub["encoder"], "full_width_total": p_full["total"],
                  "full_width_encoder": p_full["encoder"],
                  "encoder_fraction": p_sub["encoder"] / p_full["encoder"],
                  "total_fraction": p_sub["total"] / p_full["total"]}
        fl = flops(sub_cfg, 16, 128)
        fl_full = flops(full_width_config(cfg), 16, 128)
        layers = sub_cfg["layers"]
        manifest = write_manifest(
            tmp, "export", width_mult=width, width=width_key(width), model_type="bert",
            labels=list(src.manifest["labels"]), max_seq_length=max_seq, do_lower_case=True, pad_token_id=pad_id,
            vocab_size=int(cfg["vocab_size"]), num_labels=int(cfg["num_labels"]), artifacts=artifacts,
            sub_config={"num_layers": len(layers), "hidden_size": int(cfg["hidden_size"]),
                        "num_heads": [l["num_heads"] for l in layers], "head_dim": layers[0]["head_dim"],
                        "intermediate_size": [l["intermediate_size"] for l in layers],
                        "full_num_heads": int(cfg["num_attention_heads"]),
                        "full_intermediate_size": int(cfg["intermediate_size"])},
            paddle_static_files=info["paddle_static_files"], params=params, flops_b16_s128=fl,
            flops_b16_s128_full_width=fl_full,
            source={"compress_dir": str(src.folder.resolve()), "checkpoint": str(src.ckpt.resolve()),
                    "sha256": src.sha256, "task": src.manifest.get("task")},
            dev_accuracy=compress_acc, dev_metrics_exported=dev_m, onnx=info.get("onnx"), parity=parity,
            precisions=precisions, selection=selection,
            options={k: v for k, v in vars(opts).items() if k != "progress"},
            machine=machine_info(), wall_s=round(time.time() - t_start, 1), finished=now_iso())
        steps.update(1)
    _extra_copies(opts, out)
    print(table)
    return manifest


def _extra_copies(opts: ExportOptions, out: Path) -> None:
    """The tutorial's --sub_model_output_dir / --static_sub_model, when they point elsewhere."""
    if opts.sub_model_output_dir and Path(opts.sub_model_output_dir).resolve() != (out / "sub_model").resolve():
        with atomic_output_dir(opts.sub_model_output_dir) as t:
            for f in (out / "sub_model").iterdir():
                shutil.copy2(f, t / f.name)
    if opts.static_sub_model and Path(opts.static_sub_model).resolve() != (out / "static" / "model").resolve():
        prefix = Path(opts.static_sub_model)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for f in (out / "static").iterdir():
            dst = prefix.with_name(prefix.name + f.suffix)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copy2(f, tmp)
            os.replace(tmp, dst)
