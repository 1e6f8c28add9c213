"""Logits functions ``fn(input_ids, token_type_ids) -> np.ndarray`` for every runtime an
export is checked on: the sub model (dygraph), Paddle Inference (static), ONNX Runtime
and OpenVINO. All take int64 numpy [batch, seq] arrays and return float32 [batch, labels]."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from compress.artifacts import OfaserveError

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


def onnxruntime(path: Path) -> LogitsFn:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def fn(ids, types):
        return sess.run(["logits"], {"input_ids": ids.astype(np.int64),
                                     "token_type_ids": types.astype(np.int64)})[0].astype(np.float32)
    return fn


def openvino(path: Path, precision: str = "f32") -> LogitsFn:
    """OpenVINO CPU. ``precision`` f32 must be explicit: on CPUs with avx512_bf16 the
    default silently runs bf16 (DESIGN 4)."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "INFERENCE_NUM_THREADS": threads()})
    req = compiled.create_infer_request()

    def fn(ids, types):
        res = req.infer({"input_ids": ids.astype(np.int64), "token_type_ids": types.astype(np.int64)})
        return np.asarray(res[compiled.output(0)], dtype=np.float32)
    return fn


def packed(runtime: str, path: Path, pad_id: int) -> LogitsFn:
    """The packed ONNX graph through the serving runtime's own runner (pack, run, unpack),
    so export's parity covers the exact code the encoder serves with."""
    from serve.triton_models.encoder.runtimes import load_runner

    fn = load_runner(runtime, path, "fp32", threads(), pad_id=pad_id)
    if not getattr(fn, "packed", False):
        raise OfaserveError(f"{path} is not a packed graph (no segment_ids input)")
    return fn


def make(runtime: str, export_dir: Path, manifest_artifacts: dict) -> LogitsFn:
    if runtime == "openvino":
        return openvino(export_dir / manifest_artifacts["onnx"])
    if runtime == "onnxruntime":
        return onnxruntime(export_dir / manifest_artifacts.get("onnx_ort_fused", manifest_artifacts["onnx"]))
    if runtime == "paddle":
        return paddle_inference(export_dir / manifest_artifacts["paddle_static"], mkldnn=True)
    raise OfaserveError(f"unknown runtime {runtime!r}: choose openvino, onnxruntime or paddle")
