"""The names every stage shares: runtimes, precisions, repository targets and text pipelines.

Each is a ``StrEnum``: a member is its own name as a string (``Precision.FP32 == "fp32"``),
so manifests and config.pbtxt parameters hold the plain names, and every name a user or a
file gives is parsed once, at the edge, by ``parse`` (which knows the aliases).
``ofaserve/runtime/runtimes.py`` is copied into model repositories and imports nothing
from the package: it keeps its own table, pinned to these enums by a test.
"""
from __future__ import annotations

from enum import StrEnum

from ofaserve.core.errors import OfaserveError


class _Named(StrEnum):
    """``parse`` accepts a member's value or one of its aliases, case-insensitively."""

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {}

    @classmethod
    def _noun(cls) -> str:
        return cls.__name__.lower()

    @classmethod
    def parse(cls, text: str | _Named) -> _Named:
        if isinstance(text, cls):
            return text
        key = str(text).strip().lower()
        key = cls._aliases().get(key, key)
        try:
            return cls(key)
        except ValueError:
            raise OfaserveError(f"unknown {cls._noun()} {text!r}: choose one of "
                                f"{', '.join(m.value for m in cls)}") from None

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]


class Runtime(_Named):
    """An inference runtime of the encoder."""
    OPENVINO = "openvino"                # OpenVINO in ofaserve's python-backend encoder
    PADDLE = "paddle"                    # Paddle Inference (oneDNN)
    ONNXRUNTIME = "onnxruntime"          # ONNX Runtime CPU (cpu target) / Triton's onnxruntime backend (gpu)
    ONNXRUNTIME_TRT = "onnxruntime-trt"  # onnxruntime-gpu's TensorRT EP in the python backend
    OPENVINO_NATIVE = "openvino-native"  # Triton's own openvino backend (xeon target)

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino", "pd": "paddle",
                "paddle_inference": "paddle", "paddle-inference": "paddle", "trt": "onnxruntime-trt"}


class Precision(_Named):
    """A numeric precision an encoder runs in, or a rule that picks one (``AUTO``,
    ``CPU_DEFAULT``): only the first four ever execute and are recorded as executed."""
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"
    AUTO = "auto"                # the fastest gated precision, timed on the building machine
    CPU_DEFAULT = "cpu-default"  # whatever OpenVINO picks on the serving CPU (native backend)

    @classmethod
    def _aliases(cls) -> dict[str, str]:
        return {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16", "bfloat16": "bf16"}

    @property
    def executes(self) -> bool:
        """A precision kernels run in (not a rule for choosing one)."""
        return self in (Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8)


class Target(_Named):
    """Where a generated repository is served."""
    CPU = "cpu"    # the Triton server in the nvidia-pytriton wheel (python backend only)
    XEON = "xeon"  # NVIDIA's Triton images on Xeon CPUs
    GPU = "gpu"    # NVIDIA's Triton images on T4/V100-class GPUs (TensorRT)


class TextPipeline(_Named):
    """How a repository's text model turns text into a label."""
    ENSEMBLE = "ensemble"  # tokenizer -> encoder -> postprocess
    FUSED = "fused"        # one python model doing all three

    @classmethod
    def _noun(cls) -> str:
        return "text pipeline"


class DropBound(_Named):
    """What ``--width_mult auto --max_metric_drop`` holds to the tolerance: a subnet's dev
    drop from the teacher is one figure from a sample of dev sentences, and the checkpoint
    was kept for its dev scores, so the drop itself flatters the cheapest subnets."""
    CI95_UPPER = "ci95_upper"  # the upper end of the drop's 95% paired-bootstrap interval on dev
    POINT = "point"            # the drop as measured on dev

    @classmethod
    def _noun(cls) -> str:
        return "drop bound"
