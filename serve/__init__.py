"""`ofaserve repo`, `ofaserve serve`, `ofaserve classify`: a Triton model repository from
exports, the Triton server bundled in nvidia-pytriton, and the gRPC client.

Python API: ``build_repository(export_dirs, output, ...) -> RepoManifest``, ``TritonServer``
and ``classify(texts, ...)`` (see README.md, "Python API"; the gRPC contract a client codes
against is in serve/README.md). The names are imported on first use, so ``import
ofaserve.serve.cli`` stays light.
"""
from __future__ import annotations

from ofaserve.core.lazy import lazy_attributes

__getattr__, __dir__, __all__ = lazy_attributes(__name__, {
    "ofaserve.serve.repository": ("build_repository",), "ofaserve.serve.server": ("TritonServer",),
    "ofaserve.serve.client": ("classify",)})
