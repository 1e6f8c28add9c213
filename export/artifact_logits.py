"""Logits functions ``fn(input_ids, token_type_ids) -> np.ndarray`` for every runtime an
export is checked on: the sub model (dygraph), Paddle Inference (static), ONNX Runtime
and OpenVINO (these two through the serving encoder's own runners, so parity and latency
selection see the server's session settings). All take int64 numpy [batch, seq] arrays
and return float32 [batch, labels]."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.vocabulary import Precision, Runtime
from ofaserve.runtime.runtimes import default_threads, load_runner

LogitsFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def threads() -> int:
    """The serving encoder's thread rule, so parity and latency run as the server runs."""
    return default_threads()


def dygraph(model) -> LogitsFn:
    import paddle

    def fn(ids, types):
        with paddle.no_grad():
            return model(paddle.to_tensor(ids), paddle.to_tensor(types)).numpy().astype(np.float32)
    return fn


def paddle_inference(prefix: Path, mkldnn: bool = False) -> LogitsFn:
    """Paddle Inference through the serving runner; oneDNN off by default for exact parity."""
    return _int64_inputs(load_runner(Runtime.PADDLE, Path(prefix), Precision.FP32, threads(), mkldnn=mkldnn))


def _serving_runner(runtime: Runtime, path: Path, precision: Precision = Precision.FP32, pad_id: int = 0):
    """The encoder's own runner (ofaserve/runtime/runtimes.py): export checks and times
    each artifact with exactly the session settings the server will use."""
    return load_runner(runtime, path, precision, threads(), pad_id=pad_id)


def _int64_inputs(run) -> LogitsFn:
    return lambda ids, types: run(np.asarray(ids, dtype=np.int64), np.asarray(types, dtype=np.int64))


def onnxruntime(path: Path) -> LogitsFn:
    return _int64_inputs(_serving_runner(Runtime.ONNXRUNTIME, path))


def openvino(path: Path, precision: Precision = Precision.FP32) -> LogitsFn:
    """OpenVINO CPU with the precision pinned (on CPUs with avx512_bf16 the default
    silently runs bf16)."""
    return _int64_inputs(_serving_runner(Runtime.OPENVINO, path, Precision.parse(precision)))


def packed(runtime: Runtime, path: Path, pad_id: int) -> LogitsFn:
    """The packed ONNX graph through the serving runtime's own runner (pack, run, unpack),
    so export's parity covers the exact code the encoder serves with."""
    run = _serving_runner(runtime, path, pad_id=pad_id)
    if not run.packed:
        raise OfaserveError(f"{path} is not a packed graph (no segment_ids input)")
    return _int64_inputs(run)


def make(runtime: Runtime, export_dir: Path, manifest_artifacts: dict) -> LogitsFn:
    if runtime == Runtime.OPENVINO:
        return openvino(export_dir / manifest_artifacts["onnx"])
    if runtime == Runtime.ONNXRUNTIME:
        return onnxruntime(export_dir / manifest_artifacts.get("onnx_ort_fused", manifest_artifacts["onnx"]))
    if runtime == Runtime.PADDLE:
        return paddle_inference(export_dir / manifest_artifacts["paddle_static"], mkldnn=True)
    raise OfaserveError(f"unknown runtime {runtime!r}: choose openvino, onnxruntime or paddle")
