"""`ofaserve compress`: fine-tune the teacher, reorder heads and neurons by importance, train
the once-for-all supernet over widths (and depths), score every subnet.

Python API: ``compress_model(CompressOptions(...)) -> CompressManifest`` (see README.md,
"Python API"). The names are imported on first use, so ``import ofaserve.compress.cli``
stays free of paddle until the CLI has set its CPU threads.
"""
from __future__ import annotations

from ofaserve.core.lazy import lazy_attributes

_EXPORTS = {
    "compress_model": "ofaserve.compress.pipeline",
    "CompressOptions": "ofaserve.compress.options",
    "PROFILES": "ofaserve.compress.options",
    "DEFAULT_WIDTHS": "ofaserve.compress.options",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

TYPE_CHECKING = False  # True for type checkers (mypy, pyright), without importing typing
if TYPE_CHECKING:
    from ofaserve.compress.options import DEFAULT_WIDTHS, PROFILES, CompressOptions  # noqa: F401
    from ofaserve.compress.pipeline import compress_model  # noqa: F401
