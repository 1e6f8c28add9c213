"""Logits functions ``fn(input_ids, token_type_ids) -> np.ndarray`` for every runtime an
export is checked on: the sub model (dygraph), Paddle Inference (static), ONNX Runtime
and OpenVINO (these two through the serving encoder's own runners, so parity and latency
selection see the server's session settings). All take int64 numpy [batch, seq] arrays
and return float32 [batch, labels]."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ofaserve.core.artifacts import OfaserveError

LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def threads() -> int:
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def dygraph(model) -> LogitsFn:
    import paddle

    def fn(ids, types):
        with paddle.no_grad():
            return model(paddle.to_tensor(ids), paddle.to_tensor(types)).numpy().astype(np.float32)
    return fn


def paddle_inference(prefix: Path, mkldnn: bool = False) -> LogitsFn:
    import paddle.inference as pi

    prefix = Path(prefix)
    model_file = prefix.with_suffix(".json")
    if not model_file.is_file():
        model_file = prefix.with_suffix(".pdmodel")  # paddle 2.6
    config = pi.Config(str(model_file), str(prefix.with_suffix(".pdiparams")))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(threads())
    if mkldnn:
        config.enable_mkldnn()
    else:
        config.disable_mkldnn()
    config.disable_glog_info()
    predictor = pi.create_predictor(config)
    names = predictor.get_input_names()
    if sorted(names) != ["input_ids", "token_type_ids"]:
        raise OfaserveError(f"the static model's inputs are {names}, expected input_ids, token_type_ids")
    out_name = predictor.get_output_names()[0]

    def fn(ids, types):
        feeds = {"input_ids": ids, "token_type_ids": types}
        for n in names:
            h = predictor.get_input_handle(n)
            h.reshape(list(feeds[n].shape))
            h.copy_from_cpu(np.ascontiguousarray(feeds[n], dtype=np.int64))
        predictor.run()
        return predictor.get_output_handle(out_name).copy_to_cpu().astype(np.float32)
    return fn


def _serving_runner(runtime: str, path: Path, precision: str = "fp32", pad_id: int = 0):
    """The encoder's own runner (serve/triton_models/encoder/runtimes.py): export checks and
    times each artifact with exactly the session settings the server will use."""
    from ofaserve.runtime.runtimes import load_runner

    return load_runner(runtime, path, precision, threads(), pad_id=pad_id)


def _int64_inputs(run) -> LogitsFn:
    return lambda ids, types: run(np.asarray(ids, dtype=np.int64), np.asarray(types, dtype=np.int64))


def onnxruntime(path: Path) -> LogitsFn:
    return _int64_inputs(_serving_runner("onnxruntime", path))


def openvino(path: Path, precision: str = "f32") -> LogitsFn:
    """OpenVINO CPU with the precision pinned (on CPUs with avx512_bf16 the default
    silently runs bf16, DESIGN 4)."""
    return _int64_inputs(_serving_runner("openvino", path, precision))


def packed(runtime: str, path: Path, pad_id: int) -> LogitsFn:
    """The packed ONNX graph through the serving runtime's own runner (pack, run, unpack),
    so export's parity covers the exact code the encoder serves with."""
    run = _serving_runner(runtime, path, pad_id=pad_id)
    if not getattr(run, "packed", False):
        raise OfaserveError(f"{path} is not a packed graph (no segment_ids input)")
    return _int64_inputs(run)


def make(runtime: str, export_dir: Path, manifest_artifacts: dict) -> LogitsFn:
    if runtime == "openvino":
        return openvino(export_dir / manifest_artifacts["onnx"])
    if runtime == "onnxruntime":
        return onnxruntime(export_dir / manifest_artifacts.get("onnx_ort_fused", manifest_artifacts["onnx"]))
    if runtime == "paddle":
        return paddle_inference(export_dir / manifest_artifacts["paddle_static"], mkldnn=True)
    raise OfaserveError(f"unknown runtime {runtime!r}: choose openvino, onnxruntime or paddle")
