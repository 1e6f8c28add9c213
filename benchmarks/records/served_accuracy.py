"""Accuracy through the server: every dev sentence sent as text to the served text model
(ensemble or fused) over gRPC, compared with the served encoder's own runner (its runtime,
precision and model file) and with the exported FP32 ONNX model, both run in-process on
the same sentences.

    python -m benchmarks.records.served_accuracy --model_repository runs/full/model_repository \
        --export_dir runs/full/export/w0.6667 --model bert_w67 --output benchmarks/results/served_accuracy.json

Reports served accuracy vs the export manifest's dev accuracy, and the max abs difference
between served PROBS and the in-process ONNX Runtime softmax (same tokenizer file, same
truncation, the same batches of 16).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_repository", required=True, help="repository to serve (the bundled server is started)")
    p.add_argument("--export_dir", required=True, help="the export folder the served model was built from")
    p.add_argument("--model", required=True, help="text model name, e.g. bert_w67")
    p.add_argument("--batch_size", type=int, default=16, help="sentences per gRPC request")
    p.add_argument("--output", help="write the record (JSON) here")
    p.add_argument("--extra_backend", action="append", default=[], metavar="DIR",
                   help="a native Triton backend folder (holding libtriton_<name>.so, built for Triton 2.51) "
                        "to serve next to the python backend, e.g. the openvino backend (repeatable)")
    args = p.parse_args(argv)

    import onnxruntime as ort
    from sklearn.metrics import accuracy_score

    from ofaserve.benchmarks.inprocess import read_config_parameters
    from ofaserve.core.machine import machine_info
    from ofaserve.core.manifests import now_iso, read_manifest
    from ofaserve.core.files import write_json
    from ofaserve.core.tasks import load_task
    from ofaserve.core.tokenizer import encode_batch, load_tokenizer
    from ofaserve.serve.client import classify
    from ofaserve.serve.server import TritonServer, free_port

    manifest = read_manifest(args.export_dir, stage="export")
    dev = load_task(manifest["source"]["task"]).split("dev")
    texts, labels = dev.texts, dev.labels
    tok = load_tokenizer(Path(args.export_dir) / manifest["artifacts"]["tokenizer"], manifest["max_seq_length"])
    session = ort.InferenceSession(f"{args.export_dir}/{manifest['artifacts']['onnx']}",
                                   providers=["CPUExecutionProvider"])
    batches = [encode_batch(tok, texts[start:start + args.batch_size], pad_id=manifest["pad_token_id"])
               for start in range(0, len(texts), args.batch_size)]
    local = _softmax(np.concatenate([session.run(["logits"], {"input_ids": i, "token_type_ids": t})[0]
                                     for i, t in batches]))
    # the served encoder's own runner (runtime, precision, model file of its config), in-process
    served_runner, served_params = _served_runner(args.model_repository, args.model)
    same = (_softmax(np.concatenate([served_runner(i, t) for i, t in batches]))
            if served_runner is not None else None)

    with TritonServer(args.model_repository, grpc_port=free_port(), http_port=free_port(),
                      metrics_port=free_port(), extra_backends=tuple(args.extra_backend)) as server:
        answers = classify(texts, url=server.grpc_url, model=args.model, batch_size=args.batch_size)
    names = manifest["labels"]
    served = np.array([[a["probs"][n] for n in names] for a in answers], dtype=np.float32)
    served_labels = [a["label"] for a in answers]
    assert served_labels == [names[i] for i in served.argmax(-1)], "LABEL must be the argmax of PROBS"
    record = {
        "model": args.model, "export_dir": args.export_dir, "width": manifest["width"],
        "dev_sentences": len(texts),
        "served_dev_accuracy": float(accuracy_score(labels, served.argmax(-1))),
        "in_process_onnx_dev_accuracy": float(accuracy_score(labels, local.argmax(-1))),
        "export_manifest_dev_accuracy": manifest["dev_accuracy"],
        "max_abs_probs_diff_served_vs_onnx": float(np.abs(served - local).max()),
        "predictions_differing_served_vs_onnx": int((served.argmax(-1) != local.argmax(-1)).sum()),
        "served_precision": served_params.get("precision"), "served_model_file": served_params.get("model_file"),
        **({"in_process_served_runner_dev_accuracy": float(accuracy_score(labels, same.argmax(-1))),
            "max_abs_probs_diff_served_vs_served_runner": float(np.abs(served - same).max()),
            "predictions_differing_served_vs_served_runner": int((served.argmax(-1) != same.argmax(-1)).sum())}
           if same is not None else {}),
        "export_manifest_precisions": {k: {x: v.get(x) for x in ("accuracy", "test_accuracy", "agreement_with_fp32")}
                                       for k, v in (manifest.get("precisions") or {}).items() if "accuracy" in v},
        # what the served model truncates to (the repository's config, not the export's claim)
        "truncation_served": _served_truncation(args.model_repository, args.model, read_config_parameters),
        "date": now_iso(), "machine": machine_info(), "command": " ".join(["python -m benchmarks.records.served_accuracy", *(argv or sys.argv[1:])]),
    }
    for k, v in record.items():
        if k not in ("machine",):
            print(f"{k}: {v}")
    if args.output:
        write_json(args.output, record)
    return 0


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _served_runner(repository: str, model: str):
    """(runner, parameters) of a python-backend encoder, built from its config exactly as the
    server builds it; (None, {}) for a native backend's encoder."""
    from ofaserve.benchmarks.inprocess import read_config_parameters
    from ofaserve.runtime.runtimes import runner_from_parameters

    encoder = Path(repository) / f"{model}_encoder"
    params = read_config_parameters(encoder / "config.pbtxt")
    if not params.get("runtime"):
        return None, {}
    return runner_from_parameters(encoder / "1", params), params


def _served_truncation(repository: str, model: str, read_config_parameters) -> int:
    """max_seq_length of the served encoder's config (python encoders), else its tokenizer's
    (native encoders take no parameters of ours)."""
    for suffix in ("_encoder", "_tokenizer"):
        config = Path(repository) / f"{model}{suffix}" / "config.pbtxt"
        if config.is_file() and "max_seq_length" in (params := read_config_parameters(config)):
            return int(params["max_seq_length"])
    raise SystemExit(f"{repository} has no {model}_encoder or {model}_tokenizer with a max_seq_length")


if __name__ == "__main__":
    sys.exit(main())
