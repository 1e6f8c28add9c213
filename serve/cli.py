"""`ofaserve repo | serve | classify`: each takes an argv list and returns an exit code."""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from ofaserve.core.errors import OfaserveError
from ofaserve.core.vocabulary import Target, TextPipeline
from ofaserve.serve.addresses import DEFAULT_HOST, DEFAULT_URL, add_port_arguments


def _fail(e: OfaserveError) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------- repo
THREADS_HELP = ("inference threads per encoder instance (default: every core for --runtime openvino, whose "
                "instances are unpinned processes of their own; cores / instances for the others)")
RUNTIME_HELP = ("encoder runtime; cpu: openvino (default) | paddle | onnxruntime; "
                "xeon: openvino (default, python backend: packing, pinned precision, dynamic batching of "
                "any lengths) | openvino-native (Triton's openvino backend; it loads a dynamic sequence "
                "length only as max_batch_size 0, so every request runs alone: no dynamic batching, no "
                "packing, and OpenVINO picks bf16 by itself on CPUs with AVX512_BF16/AMX); "
                "gpu: onnxruntime (default, Triton's backend) | onnxruntime-trt (python backend)")
PRECISION_HELP = ("cpu/xeon with openvino: auto (default: times fp32, bf16 and the export's INT8 IR "
                  "here, among those that passed the export's accuracy gate and that this CPU has, and "
                  "serves the fastest; build the repository on the serving machine or its twin) | fp32 | "
                  "bf16 (needs a CPU with BF16) | int8 (the export's NNCF INT8 IR); paddle/onnxruntime: "
                  "fp32 (default) | bf16 (paddle); xeon openvino-native: cpu-default (default: whatever "
                  "OpenVINO picks on the serving CPU; the backend cannot pin a precision) | bf16; "
                  "gpu: fp16 (default) | fp32")


def _choices(per_target: dict[str, tuple[str, ...]]) -> list[str]:
    return sorted({v for values in per_target.values() for v in values})


def repo_parser() -> argparse.ArgumentParser:
    from ofaserve.serve.repository import (MIN_TEXT_BYTES, PRECISIONS, RUNTIMES, TARGETS, TEXT_BYTES_PER_TOKEN,
                                           TEXT_PIPELINES)
    p = argparse.ArgumentParser(
        prog="ofaserve repo", description="Generate a Triton model repository from `ofaserve export` folders: "
        "per width a tokenizer, an encoder, a postprocess model and an ensemble {name}_w{width%} "
        "(or, with --text_pipeline fused, an encoder and one fused text model {name}_w{width%}).")
    p.add_argument("--export_dir", nargs="+", required=True, type=Path, metavar="DIR",
                   help="one or more export folders (e.g. full width and compressed, served side by side)")
    p.add_argument("--output", required=True, type=Path,
                   help="repository folder to write: new, empty, or a previous repository (replaced atomically; "
                        "a README.md in it is kept); checked before any work")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --output even if it holds something other than a previous repository")
    p.add_argument("--target", choices=TARGETS, default=Target.CPU,
                   help="cpu: python-backend encoder, runs on the bundled pip server (default); "
                        "xeon: NVIDIA Triton images on Xeons, the same python-backend OpenVINO encoder (the image "
                        "needs the manifest's image_packages: serve/deploy/Dockerfile); "
                        "gpu: onnxruntime backend + TensorRT FP16 (or --runtime onnxruntime-trt for the pip server)")
    p.add_argument("--name", default="bert", help="model name prefix (default: bert)")
    p.add_argument("--max_batch_size", type=int, default=64, help="max batch size of every model (default: 64)")
    p.add_argument("--instances", type=int, default=None,
                   help="encoder instances (and fused-model instances; default: 2 with a queue limit, at least 2 "
                        "there: Triton's batcher stalls after each batch of a lone instance whose queue is full; 1 "
                        "with --max_queue_size 0)")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--runtime", choices=_choices(RUNTIMES), default=None, help=RUNTIME_HELP)
    p.add_argument("--precision", choices=_choices(PRECISIONS), default=None, help=PRECISION_HELP)
    p.add_argument("--auto_budget_s", type=float, default=20.0,
                   help="with --precision auto: seconds spent timing the candidates of each export "
                        "(at least 5 rounds each, whatever the budget; default: 20)")
    p.add_argument("--text_pipeline", choices=TEXT_PIPELINES, default=TextPipeline.ENSEMBLE,
                   help="how {name}_w{width%%} turns text into a label: ensemble (tokenizer -> encoder -> "
                        "postprocess, three python models; default) or fused (one python model doing all "
                        "three, no hops between stubs; python-backend encoders only: cpu, xeon's openvino, "
                        "gpu's onnxruntime-trt)")
    limits = p.add_argument_group(
        "request limits and backpressure", "what the text models and the queues of every batching model admit; "
        "recorded in the repository's manifest.json (text_limits per model, queue_policy)")
    limits.add_argument("--max_text_bytes", type=int, default=None,
                        help="bytes one text (one row of TEXT or TEXT_PAIR) may hold; a request with a longer one is "
                             f"refused before any text is decoded (default: {TEXT_BYTES_PER_TOKEN} per token of the "
                             f"export's max_seq_length, which is what the tokenizer keeps, and at least "
                             f"{MIN_TEXT_BYTES:,})")
    limits.add_argument("--max_request_bytes", type=int, default=None,
                        help="bytes of text one request may hold, all rows and inputs together; more is refused before "
                             "any text is decoded (default: --max_batch_size rows of --max_text_bytes, twice that "
                             "for a sentence-pair model)")
    limits.add_argument("--max_queue_size", type=int, default=None,
                        help="requests that may wait for the tokenizer, the encoder and the fused model each; Triton "
                             "refuses more at once with 'Exceeds maximum queue size' (default: --max_batch_size: one "
                             "full batch of one-sentence requests behind the running ones; 0: no limit). The "
                             "tokenizer gets two instances under a limit or timeout")
    limits.add_argument("--queue_timeout_ms", type=float, default=0.0,
                        help="a request that waited this long in a queue is refused ('Request timeout expired'); "
                             "0: no timeout (default; how long a batch runs depends on the serving CPU)")
    return p


def repo_main(argv: list[str]) -> int:
    args = repo_parser().parse_args(argv)
    from ofaserve.core.stage_cli import run_stage
    from ofaserve.serve.repository import build_repository
    code, manifest = run_stage(
        lambda: build_repository(args.export_dir, args.output, target=args.target, name=args.name,
                                 max_batch_size=args.max_batch_size, instances=args.instances,
                                 runtime=args.runtime, precision=args.precision, threads=args.threads,
                                 text_pipeline=args.text_pipeline, auto_budget_s=args.auto_budget_s,
                                 overwrite=args.overwrite, max_text_bytes=args.max_text_bytes,
                                 max_request_bytes=args.max_request_bytes, max_queue_size=args.max_queue_size,
                                 queue_timeout_ms=args.queue_timeout_ms), str(args.output))
    if code:
        return code
    served = ", ".join(f"{m} {info.precision}" for m, info in manifest.models.items())
    print(f"wrote {args.output} (target {manifest.target}, runtime {manifest.runtime}, "
          f"precision {manifest.precision}: {served}; text pipeline {manifest.text_pipeline})")
    if manifest.target != "cpu":
        print(f"NVIDIA Triton images need: pip install {' '.join(manifest.image_packages)}")
    return 0


# ---------------------------------------------------------------------------- serve
def precision_lines(repository: Path) -> list[str]:
    """What each encoder runs, and a warning when this CPU differs from the one whose
    timings chose that precision (``--precision auto``)."""
    from ofaserve.core.manifests import RepoManifest

    try:
        models = RepoManifest.read(repository).models
    except OfaserveError:  # a repository ofaserve did not write: nothing to say about precisions
        return []
    lines, here = [], None
    for model, info in models.items():
        choice = info.precision_choice
        if not choice:
            lines.append(f"{model}: precision {info.precision}")
            continue
        lines.append(f"{model}: precision {info.precision} (auto: fastest of "
                     f"{', '.join(r['precision'] for r in choice['candidates'])} on {choice['machine']['cpu']})")
        if here is None:
            from ofaserve.runtime import capabilities
            here = list(capabilities.current().openvino)
        if sorted(here) != sorted(choice["capabilities"]):
            lines.append(f"warning: {model}'s precision was timed on a CPU with {' '.join(choice['capabilities'])}; "
                         f"this one has {' '.join(here)}: rebuild the repository here (ofaserve repo) to re-time it")
    return lines


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ofaserve serve", description="Start the Triton server bundled with nvidia-pytriton on a model "
        "repository, wait until every model is ready, then watch it until Ctrl-C / SIGTERM.")
    p.add_argument("--model_repository", required=True, type=Path, help="folder written by `ofaserve repo`")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to bind (default: {DEFAULT_HOST}, loopback only; 0.0.0.0 exposes it)")
    add_port_arguments(p)
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for readiness (default: 120)")
    p.add_argument("--poll", type=float, default=2.0, help="seconds between health checks (default: 2)")
    p.add_argument("--log_verbose", type=int, default=0, help="Triton verbose log level (default: 0)")
    return p


def serve_main(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    from ofaserve.serve.server import RESTRICTED_APIS, TritonServer  # not at import: `ofaserve <other>` stays light
    server = TritonServer(args.model_repository, host=args.host, grpc_port=args.grpc_port,
                          http_port=args.http_port, metrics_port=args.metrics_port, log_verbose=args.log_verbose)
    stop = {"signal": None, "ready": False}

    def on_signal(signum, _frame):
        stop["signal"] = signum
        if not stop["ready"]:  # still starting: abort start(), which cleans up
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start(timeout=args.timeout)
        stop["ready"] = True
        models = server.models_ready()
        print(f"Triton ready: gRPC {server.grpc_url}  HTTP {server.http_url}  metrics {server.metrics_url}")
        print(f"models: {', '.join(models)}")
        for line in precision_lines(args.model_repository):
            print(line)
        print(f"restricted APIs ({', '.join(RESTRICTED_APIS)}): key for this launch in {server.key_path} "
              "(read by ofaserve's own clients)")
        print(f"server log: {server.log_path}", flush=True)
        # The server's health endpoint stays 200 when a python stub dies: watch each model.
        while stop["signal"] is None:
            time.sleep(args.poll)
            if stop["signal"] is not None:
                break
            try:
                server.check_health()
            except OfaserveError:
                if stop["signal"] is None:  # not a stop we asked for while checking
                    raise
        print(f"received {signal.Signals(stop['signal']).name}; stopping Triton", flush=True)
        code = server.stop()
        print(f"Triton stopped (exit code {code})")
        return 0
    except OfaserveError as e:
        return _fail(e)
    except KeyboardInterrupt:
        print("interrupted while starting; Triton stopped", file=sys.stderr)
        return 130
    except OSError as e:  # e.g. no space for the server's work folder
        from ofaserve.core.stage_cli import environment_error, environment_message
        if (refused := environment_error(e)) is None:
            raise
        print(f"error: {environment_message(refused, None)}", file=sys.stderr)
        return 2
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


# ---------------------------------------------------------------------------- classify
def classify_parser() -> argparse.ArgumentParser:
    from ofaserve.serve.client import DEFAULT_MODEL
    p = argparse.ArgumentParser(prog="ofaserve classify",
                                description="Send sentences (or sentence pairs) over gRPC to a served text model; "
                                            "print each label and its class probabilities, or each score of a "
                                            "regression model, with the input.")
    p.add_argument("texts", nargs="*", help="sentences to classify (single-sentence models)")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("TEXT", "TEXT_PAIR"),
                   help="a sentence pair for a pair model (repeat for more pairs)")
    p.add_argument("--file", type=Path,
                   help="also send every non-empty line of this UTF-8 file: one sentence per line, or for a pair "
                        "model one 'first<TAB>second' pair per line")
    p.add_argument("--url", default=DEFAULT_URL, help=f"Triton gRPC endpoint (default: {DEFAULT_URL})")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"text model name (default: {DEFAULT_MODEL})")
    p.add_argument("--batch_size", type=int, default=16, help="rows per request (default: 16)")
    return p


def _classify_inputs(args) -> tuple[list[str], list[str] | None]:
    """(texts, second sentences or None) from the command line and --file: one kind only."""
    from ofaserve.serve.client import read_rows

    if args.pair and args.texts:
        raise OfaserveError("give sentences or --pair pairs, not both (a model reads one kind)")
    texts = [a for a, _ in args.pair] or list(args.texts)
    pairs = [b for _, b in args.pair] if args.pair else None
    if args.file:
        more, more_pairs = read_rows(args.file)
        if texts and more and (more_pairs is None) != (pairs is None):
            raise OfaserveError(f"{args.file} holds {'pairs' if more_pairs is not None else 'single sentences'}, "
                                "the command line the other kind: a model reads one kind")
        texts = texts + more
        pairs = pairs if more_pairs is None else (pairs or []) + more_pairs
    if not texts:
        raise OfaserveError("nothing to classify: pass sentences, --pair TEXT TEXT_PAIR, or --file")
    return texts, pairs


def classify_main(argv: list[str]) -> int:
    args = classify_parser().parse_args(argv)
    from ofaserve.core.stage_cli import run_stage
    from ofaserve.serve.client import classify

    def work():
        texts, pairs = _classify_inputs(args)
        return texts, pairs, classify(texts, url=args.url, model=args.model, batch_size=args.batch_size,
                                      text_pairs=pairs)

    code, answered = run_stage(work, None)
    if code:
        return code
    texts, pairs, results = answered
    for i, (text, r) in enumerate(zip(texts, results)):
        shown = text if pairs is None else f"{text}\t{pairs[i]}"
        if "score" in r:
            print(f"{r['score']:.4f}\t{shown}")
            continue
        probs = "  ".join(f"{k}={v:.4f}" for k, v in r["probs"].items())
        print(f"{r['label']}\t{probs}\t{shown}")
    return 0
