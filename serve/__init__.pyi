"""Types of the names ``__init__.py`` imports on first use (PEP 562), for type checkers."""
from ofaserve.serve.repository import build_repository as build_repository
from ofaserve.serve.server import TritonServer as TritonServer
from ofaserve.serve.client import classify as classify

__all__ = ["build_repository", "TritonServer", "classify"]
