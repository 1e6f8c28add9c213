"""Encoder runners: one callable per inference runtime, same contract for all.

``load_runner(kind, model_path, precision, threads)`` returns
``runner(input_ids, token_type_ids) -> logits`` (int64 [batch, seq] in, float32
[batch, num_labels] out). Given the export's packed ONNX graph (inputs include
``segment_ids``), the ONNX runners pack the sentences of each batch into shared rows
(``pack_rows``) behind the same contract. The Triton encoder model (model.py next to
this file) uses it, and benchmarks import it as ``ofaserve.runtime.runtimes``
to run the very same runtime without a server. This file is copied into model
repositories as-is, so it imports nothing from the ofaserve packages.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

Logits = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Runner:
    """``runner(input_ids, token_type_ids) -> logits`` for one loaded model, and what it is:
    ``packed`` when it packs a batch's sentences into shared rows (the export's packed
    graph), so callers must not split batches for it; ``executed``, what the runtime
    reports it really runs (OpenVINO: precision hint and MatMul precisions)."""

    def __init__(self, logits: Logits, *, packed: bool = False, executed: dict | None = None):
        self._logits, self.packed, self.executed = logits, packed, executed or {}

    def __call__(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        return self._logits(input_ids, token_type_ids)

# runtime kind -> (precisions it supports, the model artifact it reads)
KINDS = {
    # int8: an NNCF-quantized OpenVINO IR (.xml); fp32/bf16 read the .onnx (or an f32 IR)
    "openvino": (("fp32", "bf16", "int8"), "onnx"),
    "paddle": (("fp32", "bf16"), "paddle_static"),
    "onnxruntime": (("fp32", "int8"), "onnx"),  # int8: an already quantized graph
    "onnxruntime-trt": (("fp16", "fp32"), "onnx"),  # onnxruntime-gpu + TensorRT EP
}


class RuntimeConfigError(ValueError):
    """A runner was asked for a kind/precision/model it cannot provide."""


def default_threads() -> int:
    """Cores this process may use (respects taskset/cgroup cpusets, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


_PRECISION_ALIASES = {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "bfloat16": "bf16"}


def load_runner(kind, model_path, precision: str = "fp32", threads: int | None = None,
                pad_id: int = 0, **options) -> Runner:
    """Build a runner.

    ``load_runner(kind, model_path, precision, threads)``: ``model_path`` is an .onnx
    file, or the Paddle static prefix (``.../model`` for model.json/.pdmodel +
    model.pdiparams) for ``paddle``. ``pad_id`` tells a packed graph's runner which tokens
    are padding.
    ``load_runner(version_dir, parameters)``: the same from an encoder's version folder
    and its config.pbtxt parameters (runtime, model_file, precision, threads), i.e.
    exactly what the Triton model runs.
    """
    if isinstance(model_path, Mapping):
        return runner_from_parameters(kind, model_path, **options)
    precision = _PRECISION_ALIASES.get(precision, precision)
    if kind not in KINDS:
        raise RuntimeConfigError(f"unknown runtime {kind!r}; choose one of {', '.join(KINDS)}")
    precisions, _ = KINDS[kind]
    if precision not in precisions:
        raise RuntimeConfigError(
            f"runtime {kind!r} supports precision {'/'.join(precisions)}, not {precision!r}")
    threads = int(threads) if threads else default_threads()
    if kind == "paddle":
        return _paddle(Path(model_path), precision, threads, **options)
    loader = {"openvino": _openvino, "onnxruntime": _onnxruntime, "onnxruntime-trt": _onnxruntime_trt}[kind]
    return loader(Path(model_path), precision, threads, pad_id=int(pad_id), **options)


def runner_from_parameters(version_dir, parameters: Mapping[str, str], **options) -> Runner:
    """The runner an encoder's config.pbtxt ``parameters`` describe, files from ``version_dir``."""
    missing = [k for k in ("runtime", "model_file") if not parameters.get(k)]
    if missing:
        raise RuntimeConfigError(f"encoder parameters lack {', '.join(missing)}")
    return load_runner(parameters["runtime"], Path(version_dir) / parameters["model_file"],
                       precision=parameters.get("precision") or "fp32",
                       threads=int(parameters.get("threads") or 0) or None,
                       pad_id=int(parameters.get("pad_token_id") or 0), **options)


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise RuntimeConfigError(f"model file {path} does not exist")


def _packed(infer: Callable[[dict], np.ndarray], pad_id: int, executed: dict | None = None) -> Runner:
    """The plain contract over a packed graph: pack, run once, logits in input order."""
    return Runner(lambda input_ids, token_type_ids: infer(pack_rows(input_ids, token_type_ids, pad_id)),
                  packed=True, executed=executed)


_MATMUL_LAYERS = ("FullyConnected", "MatMul")


def openvino_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can run on this CPU, e.g. ['BF16', 'FP32', 'INT8', ...]."""
    import openvino as ov

    return [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


def openvino_executed(compiled) -> dict:
    """What a compiled OpenVINO model really runs: the precision hint it took (on a CPU
    without bf16 a "bf16" request compiles and runs f32) and the runtime precision of its
    MatMul/FullyConnected layers (u8/i8 only when INT8 kernels execute); whether its threads
    are pinned to cores."""
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in _MATMUL_LAYERS:
            kind = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "unknown"
            counts[kind] = counts.get(kind, 0) + 1
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "f32", "bf16", ...
    int8 = any(kind in ("u8", "i8") for kind in counts)
    return {"inference_precision_hint": hint, "matmul_precisions": counts,
            "precision": "int8" if int8 else _PRECISION_ALIASES.get(hint, hint),
            "cpu_pinning": bool(compiled.get_property("ENABLE_CPU_PINNING"))}


def _openvino(path: Path, precision: str, threads: int, pad_id: int = 0) -> Runner:
    import openvino as ov

    _require_file(path)
    core = ov.Core()
    # Pin the precision: on CPUs with avx512_bf16/AMX OpenVINO silently runs bf16 otherwise.
    # An INT8 IR runs its quantized layers in INT8 under any hint; f32 keeps the rest exact.
    compiled = core.compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        # One stream using every thread: two single-thread streams running the chunks of a
        # batch concurrently measured slower on 2 cores, a lone sentence most of all.
        "NUM_STREAMS": 1,
        # Each Triton python-backend instance is its own process with its own OpenVINO, and
        # pinned runtimes in two processes bind their threads to the same cores: two
        # one-thread instances measured one core's throughput between them, unpinned two.
        "ENABLE_CPU_PINNING": False,
        # Dynamic padding makes every (rows, seq) a new shape, each cached by the CPU
        # plugin (default: thousands of entries, memory grows with traffic). 256 entries
        # hold the shapes of real sentence traffic: measured as fast as the default on
        # length-bucketed dev batches, where 16 entries were slower.
        "CPU_RUNTIME_CACHE_CAPACITY": 256,
    })
    executed = openvino_executed(compiled)
    if (executed["precision"] == "int8") != (precision == "int8"):
        raise RuntimeConfigError(
            f"{path} runs {executed['precision']}, not {precision}: load an NNCF-quantized IR with "
            "precision int8 and an unquantized model with fp32/bf16")
    if precision == "bf16" and executed["inference_precision_hint"] != "bf16":
        # OpenVINO compiles a bf16 request on a CPU without bf16 and silently runs f32
        raise RuntimeConfigError(
            f"precision bf16 needs a CPU with BF16 (OpenVINO's capabilities here: "
            f"{' '.join(openvino_capabilities())}; it would run {executed['inference_precision_hint']}): "
            "use fp32, or int8 where an INT8 IR was exported, or auto")
    request = compiled.create_infer_request()
    output = compiled.output("logits")
    if "segment_ids" in {name for port in compiled.inputs for name in port.get_names()}:
        return _packed(lambda feeds: np.array(request.infer(feeds)[output], dtype=np.float32, copy=True), pad_id,
                       executed)

    def run(input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        result = request.infer({"input_ids": input_ids, "token_type_ids": token_type_ids})
        return np.array(result[output], dtype=np.float32, copy=True)
    return Runner(run, executed=executed)


def _paddle(prefix: Path, precision: str, threads: int, mkldnn: bool = True) -> Runner:
    import paddle.inference as pi

    # paddle 3.x saves model.json (PIR); 2.6 saves model.pdmodel.
    graph = next((prefix.with_name(prefix.name + ext) for ext in (".json", ".pdmodel")
                  if prefix.with_name(prefix.name + ext).is_file()), None)
    params = prefix.with_name(prefix.name + ".pdiparams")
    if graph is None or not params.is_file():
        raise RuntimeConfigError(f"no Paddle static model at {prefix} (.json/.pdmodel + .pdiparams)")
    config = pi.Config(str(graph), str(params))
    config.disable_gpu()
    if mkldnn:
        config.enable_mkldnn()
        # oneDNN caches one primitive set per input shape; bound it, since every
        # batch/sequence length is a new shape under dynamic padding.
        config.set_mkldnn_cache_capacity(32)
        if precision == "bf16":
            config.enable_mkldnn_bfloat16()
    elif precision != "fp32":
        raise RuntimeConfigError(f"Paddle Inference runs {precision} only with oneDNN (mkldnn) on")
    else:
        config.disable_mkldnn()  # plain kernels: the exact reference the export's parity uses
    config.set_cpu_math_library_num_threads(threads)
    config.switch_ir_optim(True)
    config.disable_glog_info()
    predictor = pi.create_predictor(config)
    names = predictor.get_input_names()
    if sorted(names) != ["input_ids", "token_type_ids"]:
        raise RuntimeConfigError(f"{graph} has inputs {names}, expected input_ids and token_type_ids")
    handles = {n: predictor.get_input_handle(n) for n in names}
    out = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        handles["input_ids"].reshape(input_ids.shape)
        handles["input_ids"].copy_from_cpu(np.ascontiguousarray(input_ids))
        handles["token_type_ids"].reshape(token_type_ids.shape)
        handles["token_type_ids"].copy_from_cpu(np.ascontiguousarray(token_type_ids))
        predictor.run()
        return out.copy_to_cpu().astype(np.float32, copy=False)

    return Runner(run, executed={"precision": precision, "mkldnn": mkldnn})


def _ort_run(session, pad_id: int = 0) -> Runner:
    if "segment_ids" in {i.name for i in session.get_inputs()}:
        return _packed(lambda feeds: session.run(["logits"], feeds)[0].astype(np.float32, copy=False), pad_id)

    def run(input_ids: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        (logits,) = session.run(["logits"], {"input_ids": input_ids, "token_type_ids": token_type_ids})
        return logits.astype(np.float32, copy=False)
    return Runner(run, executed={"providers": session.get_providers()})


def _import_onnxruntime():
    """onnxruntime, or the one line saying which extra brings it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeConfigError("ONNX Runtime is not installed: pip install 'ofaserve[cpu]' on a CPU host or "
                                 "'ofaserve[gpu]' on a GPU host (one of them: both install the onnxruntime module)"
                                 ) from e
    return onnxruntime


def ort_cpu_options(threads: int):
    ort = _import_onnxruntime()

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # ORT's worker threads busy-wait after each run by default; on a small CPU shared with
    # Triton, the tokenizer/postprocess stubs and other runtimes that steals their cores
    # (a spinning in-process ORT runner slowed the served real-text requests after it:
    # benchmarks/results/history/latency_r4a_ortspin.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: graph-optimizer notices are not for the server log
    return opts


def _onnxruntime(path: Path, precision: str, threads: int, pad_id: int = 0) -> Runner:
    ort = _import_onnxruntime()

    _require_file(path)
    return _ort_run(ort.InferenceSession(str(path), ort_cpu_options(threads), providers=["CPUExecutionProvider"]),
                    pad_id)


TRT_OPT_BATCH = 16  # the batch the seed's workload and the dynamic batcher's preferred size use


def padded_length(max_seq: int, multiple: int = 0) -> int:
    """The longest sequence a tokenizer that truncates to ``max_seq`` and then pads to a
    multiple of ``multiple`` (0 or 1: no such padding) sends: 50 with 16 sends up to 64."""
    return -(-max_seq // multiple) * multiple if multiple > 1 else max_seq


def trt_profile_shapes(max_batch: int, max_seq: int, opt_batch: int = TRT_OPT_BATCH) -> dict[str, str]:
    """TensorRT optimisation profile for the encoder's inputs, in ONNX Runtime's option
    syntax ("input_ids:1x1,token_type_ids:1x1"): every batch 1..max_batch and length
    1..max_seq, tuned for ``opt_batch`` x max_seq. Without an explicit profile the TensorRT
    EP builds for the shapes it has seen and rebuilds the engine (blocking the instance)
    the first time a request falls outside them; with one, a request outside it fails. So
    ``max_seq`` is the longest length the encoder is sent (padded_length), not the export's
    max_seq_length."""
    def shapes(batch: int, seq: int) -> str:
        return ",".join(f"{name}:{batch}x{seq}" for name in ("input_ids", "token_type_ids"))
    return {"trt_profile_min_shapes": shapes(1, 1),
            "trt_profile_opt_shapes": shapes(min(opt_batch, max_batch), max_seq),
            "trt_profile_max_shapes": shapes(max_batch, max_seq)}


def _onnxruntime_trt(path: Path, precision: str, threads: int, pad_id: int = 0, device_id: int = 0,
                     cache_dir: str | None = None, max_workspace_size: int = 1 << 30,
                     max_batch: int = 64, max_seq: int = 128) -> Runner:
    """onnxruntime-gpu with TensorRT (FP16 by default), CUDA EP as the fallback for
    nodes TensorRT cannot take. Engines are cached so only the first load builds them."""
    ort = _import_onnxruntime()

    _require_file(path)
    available = ort.get_available_providers()
    if "TensorrtExecutionProvider" not in available:
        # both wheels install the same `onnxruntime` module: the CPU one must go first
        raise RuntimeConfigError(
            "runtime 'onnxruntime-trt' needs onnxruntime-gpu and TensorRT in place of the CPU onnxruntime "
            f"(pip uninstall -y onnxruntime && pip install 'ofaserve[gpu]'); this one offers {available}")
    cache_dir = cache_dir or str(path.parent / "trt_cache")
    os.makedirs(cache_dir, exist_ok=True)  # all levels: the TensorRT EP itself creates only the last
    trt = {"device_id": device_id, "trt_fp16_enable": precision == "fp16",
           # The exported LayerNorm is ReduceMean, Sub, Pow, ReduceMean, ...: its sum of squares
           # overflows FP16. The provider forces every Pow layer directly followed by a Reduce
           # layer (the square and its mean) to FP32; the rest of the LayerNorm stays FP16.
           "trt_layer_norm_fp32_fallback": precision == "fp16",
           "trt_max_workspace_size": max_workspace_size,
           "trt_engine_cache_enable": True, "trt_engine_cache_path": cache_dir,
           "trt_timing_cache_enable": True, "trt_timing_cache_path": cache_dir,
           **trt_profile_shapes(max_batch, max_seq)}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(path), opts, providers=[("TensorrtExecutionProvider", trt),
                                    ("CUDAExecutionProvider", {"device_id": device_id}),
                                    "CPUExecutionProvider"])
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        # ONNX Runtime only warns when TensorRT fails to load, then runs on CUDA or the CPU
        raise RuntimeConfigError(
            "runtime 'onnxruntime-trt': TensorRT did not load (needs a CUDA GPU and libnvinfer: pip install tensorrt, "
            f"its tensorrt_libs folder on LD_LIBRARY_PATH); the session fell back to {session.get_providers()}")
    return _ort_run(session, pad_id)


def check_inputs(input_ids: np.ndarray, token_type_ids: np.ndarray, *, vocab_size: int,
                 max_seq_length: int, type_vocab_size: int = 2) -> str | None:
    """Why a batch cannot be run (one line), or None when it is valid.

    Out-of-range ids would index past the embedding tables: some runtimes then read
    garbage or crash the process instead of raising, so reject them up front."""
    if input_ids.dtype != np.int64 or token_type_ids.dtype != np.int64:
        return f"input_ids and token_type_ids must be INT64, got {input_ids.dtype} and {token_type_ids.dtype}"
    if input_ids.ndim != 2 or token_type_ids.ndim != 2:
        return f"expected [batch, seq] inputs, got shapes {list(input_ids.shape)} and {list(token_type_ids.shape)}"
    if input_ids.shape != token_type_ids.shape:
        return f"input_ids {list(input_ids.shape)} and token_type_ids {list(token_type_ids.shape)} differ in shape"
    if input_ids.shape[0] == 0:
        return "empty batch: input_ids needs at least one row"
    if input_ids.shape[1] == 0:
        return "empty sequence: input_ids needs at least one token per row"
    if input_ids.shape[1] > max_seq_length:
        return f"sequence length {input_ids.shape[1]} exceeds the model's max_seq_length {max_seq_length}"
    if input_ids.size and (input_ids.min() < 0 or input_ids.max() >= vocab_size):
        return (f"token id out of range: ids must be in [0, {vocab_size}), "
                f"got min {int(input_ids.min())} max {int(input_ids.max())}")
    if token_type_ids.size and (token_type_ids.min() < 0 or token_type_ids.max() >= type_vocab_size):
        return f"token_type_ids must be in [0, {type_vocab_size})"
    return None


def run_length_buckets(run: Runner, input_ids: np.ndarray, token_type_ids: np.ndarray, buckets: int,
                       pad_id: int = 0, min_rows: int = 4, min_saving: float = 0.2) -> np.ndarray:
    """``run`` over a padded batch as ``buckets`` length-sorted chunks of equal row count,
    each padded only to its own longest row, when that removes >= ``min_saving`` of the
    padded tokens; otherwise one call.

    Logits do not depend on padding (the graph masks pad positions), so the result equals
    one call over the whole batch. Equal-size chunks keep the set of (rows, seq) shapes
    small, which matters as much as the padding: OpenVINO caches compiled kernels per
    shape, and a cost-optimal split into chunks of any size measured slower on real
    sentence batches because its many shapes kept missing that cache."""
    n, seq = input_ids.shape
    k = min(max(1, int(buckets)), n // min_rows)
    if k <= 1:
        return run(input_ids, token_type_ids)
    not_pad = input_ids != pad_id
    lengths = np.where(not_pad.any(1), seq - np.argmax(not_pad[:, ::-1], axis=1), 1)  # last real token + 1
    parts = np.array_split(np.argsort(lengths, kind="stable"), k)
    if sum(len(p) * int(lengths[p].max()) for p in parts) > (1 - min_saving) * n * seq:
        return run(input_ids, token_type_ids)
    out = None
    for part in parts:
        width = int(lengths[part].max())
        res = run(np.ascontiguousarray(input_ids[part, :width]), np.ascontiguousarray(token_type_ids[part, :width]))
        if out is None:
            out = np.empty((n,) + res.shape[1:], dtype=res.dtype)
        out[part] = res
    return out


PACK_WIDTHS = (32, 64, 128)


def _first_fit(lengths: np.ndarray, order: np.ndarray, width: int) -> tuple[int, np.ndarray]:
    """First-fit of sentences (longest first) into rows of ``width`` tokens: (rows, row of each)."""
    free: list[int] = []  # room left per row
    place = np.empty(len(lengths), dtype=np.int64)
    for i in order:
        length = int(lengths[i])
        row = next((r for r, room in enumerate(free) if room >= length), None)
        if row is None:
            free.append(width)
            row = len(free) - 1
        place[i] = row
        free[row] -= length
    return len(free), place


def pack_rows(input_ids: np.ndarray, token_type_ids: np.ndarray, pad_id: int = 0,
              widths: tuple[int, ...] = PACK_WIDTHS, exact_below: int = 4,
              exact_saving: float = 0.15) -> dict[str, np.ndarray]:
    """Sequence packing: lay the sentences of a padded batch end to end in shared rows
    (first-fit decreasing) and return the packed graph's inputs (see export's packed
    variant): input_ids, token_type_ids, position_ids, segment_ids, cls_index (in input
    order, so the logits come back in input order).

    The row width is the one of ``widths`` that needs the fewest row x width tokens. A few
    widths, not the batch's own longest, keep the set of shapes small: OpenVINO compiles
    kernels for each new shape and caches them. The batch's longest
    is used instead for batches of fewer than ``exact_below`` sentences (one sentence is
    not padded up to 32) or when it saves ``exact_saving`` of the tokens (e.g. rows of 100
    equal-length tokens, which a 128 row would pad by 28%)."""
    n, seq = input_ids.shape
    not_pad = input_ids != pad_id
    lengths = np.where(not_pad.any(1), seq - np.argmax(not_pad[:, ::-1], axis=1), 1)  # last real token + 1
    longest = int(lengths.max())
    order = np.argsort(-lengths, kind="stable")
    best = None
    for width in sorted({w for w in widths if w >= longest}):
        rows, place = _first_fit(lengths, order, width)
        if best is None or rows * width < best[0] * best[1]:
            best = (rows, width, place)
    rows, place = _first_fit(lengths, order, longest)
    if best is None or (rows * longest <= best[0] * best[1] if n < exact_below
                        else rows * longest <= (1 - exact_saving) * best[0] * best[1]):
        best = (rows, longest, place)
    rows, width, place = best
    ids = np.full((rows, width), pad_id, dtype=np.int64)
    types = np.zeros((rows, width), dtype=np.int64)
    positions = np.zeros((rows, width), dtype=np.int64)
    segments = np.zeros((rows, width), dtype=np.int64)
    cls_index = np.empty(n, dtype=np.int64)
    used = np.zeros(rows, dtype=np.int64)
    count = np.zeros(rows, dtype=np.int64)
    for i in order:
        r, length = int(place[i]), int(lengths[i])
        at = int(used[r])
        ids[r, at:at + length] = input_ids[i, :length]
        types[r, at:at + length] = token_type_ids[i, :length]
        positions[r, at:at + length] = np.arange(length)
        count[r] += 1
        segments[r, at:at + length] = count[r]
        cls_index[i] = r * width + at
        used[r] += length
    return {"input_ids": ids, "token_type_ids": types, "position_ids": positions,
            "segment_ids": segments, "cls_index": cls_index}
