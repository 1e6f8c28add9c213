"""`ofaserve export`: one trained subnet of the OFA supernet -> standalone sub model, Paddle
static model and ONNX (+ FP16 / INT8 variants), parity-checked end to end.

Python API: ``export_subnet(compress_dir, output_dir, width_mult, **ExportOptions fields) ->
ExportManifest`` (see README.md, "Python API"). The names are imported on first use, so
``import ofaserve.export.cli`` stays light.
"""
from __future__ import annotations

from ofaserve.core.lazy import lazy_attributes

_EXPORTS = {
    "export_subnet": "ofaserve.export.exporter",
    "ExportOptions": "ofaserve.export.exporter",
    "run_export": "ofaserve.export.exporter",
    "ParityError": "ofaserve.export.parity",
    "build_sub_model": "ofaserve.compress.submodel",
    "load_sub_model": "ofaserve.compress.submodel",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

TYPE_CHECKING = False  # True for type checkers (mypy, pyright), without importing typing
if TYPE_CHECKING:
    from ofaserve.compress.submodel import build_sub_model, load_sub_model  # noqa: F401
    from ofaserve.export.exporter import ExportOptions, export_subnet, run_export  # noqa: F401
    from ofaserve.export.parity import ParityError  # noqa: F401
