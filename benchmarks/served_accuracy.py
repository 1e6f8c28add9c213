"""Accuracy through the server: every dev sentence sent as text to the served text model
(ensemble or fused) over gRPC, compared with the exported ONNX model run in-process on
the same sentences.

    python benchmarks/served_accuracy.py --model_repository runs/full/model_repository \
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
    from ofaserve.core.artifacts import machine_info, now_iso, read_manifest, write_json
    from ofaserve.core.tasks import load_task
    from ofaserve.core.tokenizer import encode_batch, load_tokenizer
    from ofaserve.serve.client import classify
    from ofaserve.serve.server import TritonServer, free_port

    manifest = read_manifest(args.export_dir, stage="export")
    texts, labels = load_task(manifest["source"]["task"]).split("dev")
    tok = load_tokenizer(Path(args.export_dir) / manifest["artifacts"]["tokenizer"], manifest["max_seq_length"])
    session = ort.InferenceSession(f"{args.export_dir}/{manifest['artifacts']['onnx']}",
                                   providers=["CPUExecutionProvider"])
    local = []
    for start in range(0, len(texts), args.batch_size):
        ids, types = encode_batch(tok, texts[start:start + args.batch_size], pad_id=manifest["pad_token_id"])
        logits = session.run(["logits"], {"input_ids": ids, "token_type_ids": types})[0]
        e = np.exp(logits - logits.max(-1, keepdims=True))
        local.append(e / e.sum(-1, keepdims=True))
    local = np.concatenate(local)

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
        # what the served model truncates to (the repository's config, not the export's claim)
        "truncation_served": _served_truncation(args.model_repository, args.model, read_config_parameters),
        "date": now_iso(), "machine": machine_info(), "command": " ".join(["python benchmarks/served_accuracy.py", *(argv or sys.argv[1:])]),
    }
    for k, v in record.items():
        if k not in ("machine",):
            print(f"{k}: {v}")
    if args.output:
        write_json(args.output, record)
    return 0


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
