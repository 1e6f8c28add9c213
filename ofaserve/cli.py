"""`ofaserve`: one command, one subcommand per pipeline stage.

Each stage keeps its own thin CLI (``python -m ofaserve.compress``,
``python -m ofaserve.export``, ``python benchmarks/run.py`` ...); this only dispatches
to them, importing a stage only when its command runs.
"""
from __future__ import annotations

import importlib
import sys

# What `pip install ofaserve` leaves out (the serving install); `ofaserve[train]` adds it.
TRAINING_STACK = ("paddle", "paddleslim", "paddlenlp", "paddle2onnx", "nncf", "onnx", "safetensors")

COMMANDS = {
    "compress": ("ofaserve.compress.cli", "main",
                 "fine-tune the teacher, then train the OFA supernet over widths (and depths)"),
    "export": ("ofaserve.export.cli", "main",
               "slice one subnet (width, depth) into sub model + Paddle static + ONNX, parity-checked"),
    "repo": ("ofaserve.serve.cli", "repo_main", "generate a Triton model repository (cpu | xeon | gpu)"),
    "serve": ("ofaserve.serve.cli", "serve_main", "start the bundled Triton server on a model repository"),
    "classify": ("ofaserve.serve.cli", "classify_main", "classify text over gRPC"),
    "bench": ("ofaserve.benchmarks.run", "main", "batch-16 latency report over gRPC, full width vs compressed"),
    "demo": ("ofaserve.demo", "main", "the whole pipeline end to end on the embedded CPU default"),
}


def usage() -> str:
    lines = ["usage: ofaserve <command> [--help] [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `ofaserve <command> --help` for the flags of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ofaserve: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        return int(getattr(importlib.import_module(module), func)(rest) or 0)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAINING_STACK:
            raise
        print(f"ofaserve {name}: {e.name} is not installed; `ofaserve {name}` needs the training stack: "
              "pip install 'ofaserve[train]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
