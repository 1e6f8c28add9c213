"""`ofaserve export`: one trained subnet of the OFA supernet -> standalone sub model, Paddle
static model and ONNX (+ FP16 / INT8 variants), parity-checked end to end.

Python API: ``export_subnet(compress_dir, output_dir, width_mult, **ExportOptions fields) ->
ExportManifest`` (see README.md, "Python API"). The names are imported on first use, so
``import ofaserve.export.cli`` stays light.
"""
from __future__ import annotations

from ofaserve.core.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(__name__, {
    "ofaserve.export.exporter": ("export_subnet", "ExportOptions", "run_export"),
    "ofaserve.export.parity": ("ParityError",), "ofaserve.compress.submodel": ("build_sub_model", "load_sub_model")})
