"""`ofaserve export`: one trained width of the OFA supernet -> standalone sub model,
Paddle static model and ONNX (+ FP16 / INT8 variants), parity-checked end to end."""
from __future__ import annotations

from ofaserve.export.exporter import ExportOptions, ParityError, export_subnet, run_export  # noqa: F401
from ofaserve.compress.submodel import build_sub_model, load_sub_model  # noqa: F401

__all__ = ["ExportOptions", "ParityError", "export_subnet", "run_export", "build_sub_model", "load_sub_model"]
