"""Where the bundled Triton server listens unless told otherwise, and the flags that change
it. Loopback only by default; the ports are Triton's own defaults. No server import here, so
a CLI can build its parser before anything heavy loads."""
from __future__ import annotations

import argparse

DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
DEFAULT_URL = f"{DEFAULT_HOST}:{DEFAULT_GRPC_PORT}"

_PORTS = (("--grpc_port", DEFAULT_GRPC_PORT, "gRPC"), ("--http_port", DEFAULT_HTTP_PORT, "HTTP/REST"),
          ("--metrics_port", DEFAULT_METRICS_PORT, "Prometheus metrics"))


def add_port_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, used: str = "") -> None:
    """``--grpc_port``, ``--http_port`` and ``--metrics_port`` with the server's defaults;
    ``used``: when the flags apply (" for --start_server")."""
    for flag, default, protocol in _PORTS:
        parser.add_argument(flag, type=int, default=default, help=f"{protocol} port{used} (default: %(default)s)")
