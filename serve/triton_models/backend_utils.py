"""Helpers shared by ofaserve's python-backend models.

`ofaserve repo` copies this file next to each model.py, so every model folder of a
repository stays self-contained (no import of the ofaserve package inside Triton).
"""
import triton_python_backend_utils as pb_utils


def param(config, key, default=None):
    """A string parameter of config.pbtxt; a missing one without default fails the load."""
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None:
        if default is None:
            raise pb_utils.TritonModelException(f"config.pbtxt lacks parameter {key!r}")
        return default
    return value


def request_error(message, code_name="INVALID_ARG"):
    """A per-request error with a status code where this Triton version supports codes."""
    code = getattr(pb_utils.TritonError, code_name, None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)
