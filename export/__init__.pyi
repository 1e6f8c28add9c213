"""Types of the names ``__init__.py`` imports on first use (PEP 562), for type checkers."""
from ofaserve.export.exporter import ExportOptions as ExportOptions, export_subnet as export_subnet
from ofaserve.export.exporter import run_export as run_export
from ofaserve.export.parity import ParityError as ParityError
from ofaserve.compress.submodel import build_sub_model as build_sub_model, load_sub_model as load_sub_model

__all__ = ["export_subnet", "ExportOptions", "run_export", "ParityError", "build_sub_model", "load_sub_model"]
