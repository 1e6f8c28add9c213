"""Types of the names ``__init__.py`` imports on first use (PEP 562), for type checkers."""
from ofaserve.compress.pipeline import compress_model as compress_model
from ofaserve.compress.options import CompressOptions as CompressOptions, PROFILES as PROFILES, DEFAULT_WIDTHS as DEFAULT_WIDTHS

__all__ = ["compress_model", "CompressOptions", "PROFILES", "DEFAULT_WIDTHS"]
