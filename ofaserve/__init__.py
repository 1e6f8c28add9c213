"""ofaserve: compress a BERT text classifier with PaddleSlim once-for-all, export the
chosen width, serve it on Triton over gRPC.

One import name, layered (checked by import-linter, see ``[tool.importlinter]`` in
pyproject.toml); higher layers may import lower ones, never the reverse:

    ofaserve.cli, ofaserve.demo         the `ofaserve` command; the end-to-end demo
    ofaserve.benchmarks, ofaserve.export  load tests; slicing + parity (export reads compress)
    ofaserve.serve, ofaserve.compress   Triton repository + server + client; training
    ofaserve.runtime                    encoder runners, copied into Triton repositories
    ofaserve.core                       errors, manifests, atomic outputs, naming

The stage folders live at the repository's top level (compress/, export/, serve/,
benchmarks/) and are mapped into this package by setuptools' ``package-dir``.
"""
__version__ = "0.1.0"
