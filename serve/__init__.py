"""`ofaserve repo`, `ofaserve serve`, `ofaserve classify`: a Triton model repository from
exports, the Triton server bundled in nvidia-pytriton, and the gRPC client.

Python API: ``build_repository(export_dirs, output, ...) -> RepoManifest``, ``TritonServer``
and ``classify(texts, ...)`` (see README.md, "Python API"; the gRPC contract a client codes
against is in serve/README.md). The names are imported on first use, so ``import
ofaserve.serve.cli`` stays light.
"""
from __future__ import annotations

from ofaserve.core.lazy import lazy_attributes

_EXPORTS = {
    "build_repository": "ofaserve.serve.repository",
    "TritonServer": "ofaserve.serve.server",
    "classify": "ofaserve.serve.client",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

TYPE_CHECKING = False  # True for type checkers (mypy, pyright), without importing typing
if TYPE_CHECKING:
    from ofaserve.serve.client import classify  # noqa: F401
    from ofaserve.serve.repository import build_repository  # noqa: F401
    from ofaserve.serve.server import TritonServer  # noqa: F401
