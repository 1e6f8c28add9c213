"""`ofaserve compress`: fine-tune the teacher, reorder heads and neurons by importance, train
the once-for-all supernet over widths (and depths), score every subnet.

Python API: ``compress_model(CompressOptions(...)) -> CompressManifest`` (see README.md,
"Python API"). The names are imported on first use, so ``import ofaserve.compress.cli``
stays free of paddle until the CLI has set its CPU threads.
"""
from __future__ import annotations

from ofaserve.core.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(__name__, {
    "ofaserve.compress.pipeline": ("compress_model",),
    "ofaserve.compress.options": ("CompressOptions", "PROFILES", "DEFAULT_WIDTHS")})
