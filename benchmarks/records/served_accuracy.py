"""The task's metric through the server: every dev input (a sentence, or a sentence pair)
sent as text to the served text model (ensemble or fused) over gRPC, compared with the
served encoder's own runner (its runtime, precision and model file) and with the exported
FP32 ONNX model, both run in-process on the same inputs.

    python -m benchmarks.records.served_accuracy --model_repository runs/full/model_repository \
        --export_dir runs/full/export/w0.6667 --model bert_w67 --output benchmarks/results/served_accuracy.json

Reports the served dev score (every metric of the task; its main metric first) against the
export manifest's dev score, and the largest difference between what the server answered
(PROBS, or SCORE for a regression task) and the in-process ONNX Runtime outputs (same
tokenizer file, same truncation, the same batches of 16).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ofaserve.benchmarks.inprocess import read_config_parameters
from ofaserve.core.files import write_json
from ofaserve.core.machine import machine_info
from ofaserve.core.manifests import CompressManifest, ExportManifest, now_iso
from ofaserve.core.metrics import predictions, score
from ofaserve.core.tasks import Split, TaskSpec, TaskType
from ofaserve.core.tokenizer import encode_batch, load_tokenizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_repository", required=True, help="repository to serve (the bundled server is started)")
    p.add_argument("--export_dir", required=True, help="the export folder the served model was built from")
    p.add_argument("--model", required=True, help="text model name, e.g. bert_w67")
    p.add_argument("--batch_size", type=int, default=16, help="inputs per gRPC request")
    p.add_argument("--output", help="write the record (JSON) here")
    p.add_argument("--extra_backend", action="append", default=[], metavar="DIR",
                   help="a native Triton backend folder (holding libtriton_<name>.so, built for Triton 2.51) "
                        "to serve next to the python backend, e.g. the openvino backend (repeatable)")
    args = p.parse_args(argv)
    record = measure(args.model_repository, args.export_dir, args.model, args.batch_size, tuple(args.extra_backend))
    record["command"] = " ".join(["python -m benchmarks.records.served_accuracy", *(argv or sys.argv[1:])])
    for k, v in record.items():
        if k != "machine":
            print(f"{k}: {v}")
    if args.output:
        write_json(args.output, record)
    return 0


def measure(repository: str, export_dir: str, model: str, batch_size: int = 16,
            extra_backends: tuple[str, ...] = ()) -> dict:
    """The served dev score of ``model`` against its export's, and the outputs' differences."""
    import onnxruntime as ort

    from ofaserve.serve.server import TritonServer, free_port

    manifest = ExportManifest.read(export_dir)
    spec = manifest.spec
    dev = CompressManifest.read(manifest.source["compress_dir"]).split("dev")
    tok = load_tokenizer(manifest.artifact(export_dir, "tokenizer"), manifest.max_seq_length)
    session = ort.InferenceSession(str(manifest.artifact(export_dir, "onnx")), providers=["CPUExecutionProvider"])
    batches = [encode_batch(tok, dev.inputs(range(start, min(start + batch_size, len(dev)))),
                            pad_id=manifest.pad_token_id) for start in range(0, len(dev), batch_size)]
    local = _answers(spec, np.concatenate([session.run(["logits"], {"input_ids": i, "token_type_ids": t})[0]
                                           for i, t in batches]))
    # the served encoder's own runner (runtime, precision, model file of its config), in-process
    served_runner, served_params = _served_runner(repository, model)
    same = (_answers(spec, np.concatenate([served_runner(i, t) for i, t in batches]))
            if served_runner is not None else None)

    with TritonServer(repository, grpc_port=free_port(), http_port=free_port(),
                      metrics_port=free_port(), extra_backends=extra_backends) as server:
        served = _served_answers(spec, dev, manifest.labels, server.grpc_url, model, batch_size)
    record = {
        "model": model, "export_dir": export_dir, "width": manifest.width, "task": spec.name,
        "task_type": str(spec.type), "metric": spec.main_metric, "dev_inputs": len(dev),
        "served_dev": score(spec, served, dev.labels),
        "in_process_onnx_dev": score(spec, local, dev.labels),
        "export_manifest_dev_score": manifest.dev_score,
        **_differences(spec, served, local, "onnx"),
        "served_precision": served_params.get("precision"), "served_model_file": served_params.get("model_file"),
        **({"in_process_served_runner_dev": score(spec, same, dev.labels), **_differences(spec, served, same, "served_runner")}
           if same is not None else {}),
        "export_manifest_precisions": {k: {x: v[x] for x in (spec.main_metric, "delta_vs_fp32", "agreement_with_fp32",
                                                              "max_abs_score_diff_vs_fp32") if x in v}
                                       for k, v in manifest.precisions.items() if isinstance(v, dict)},
        # what the served model truncates to (the repository's config, not the export's claim)
        "truncation_served": _served_truncation(repository, model),
        "date": now_iso(), "machine": machine_info(),
    }
    return record


def _answers(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """What the server answers for these logits: class probabilities, or the score."""
    if spec.type == TaskType.REGRESSION:
        return logits.reshape(len(logits), -1)[:, :1].astype(np.float32)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _served_answers(spec: TaskSpec, dev: Split, labels: list[str], url: str, model: str,
                    batch_size: int) -> np.ndarray:
    """PROBS [n, classes] in the manifest's label order, or SCORE [n, 1], from the server."""
    from ofaserve.serve.client import classify

    answers = classify(dev.texts, url=url, model=model, batch_size=batch_size, text_pairs=dev.text_pairs)
    if spec.type == TaskType.REGRESSION:
        return np.array([[a["score"]] for a in answers], dtype=np.float32)
    probs = np.array([[a["probs"][n] for n in labels] for a in answers], dtype=np.float32)
    if [a["label"] for a in answers] != [labels[i] for i in probs.argmax(-1)]:
        raise SystemExit(f"{model}: a LABEL is not the argmax of its PROBS")
    return probs


def _differences(spec: TaskSpec, served: np.ndarray, other: np.ndarray, name: str) -> dict:
    out = {f"max_abs_{'score' if spec.type == TaskType.REGRESSION else 'probs'}_diff_served_vs_{name}":
           float(np.abs(served - other).max())}
    if spec.type == TaskType.CLASSIFICATION:
        out[f"predictions_differing_served_vs_{name}"] = int(
            (predictions(spec, served) != predictions(spec, other)).sum())
    return out


def _served_runner(repository: str, model: str):
    """(runner, parameters) of a python-backend encoder, built from its config exactly as the
    server builds it; (None, {}) for a native backend's encoder."""
    from ofaserve.runtime.runtimes import runner_from_parameters

    encoder = Path(repository) / f"{model}_encoder"
    params = read_config_parameters(encoder / "config.pbtxt")
    if not params.get("runtime"):
        return None, {}
    return runner_from_parameters(encoder / "1", params), params


def _served_truncation(repository: str, model: str) -> int:
    """max_seq_length of the served encoder's config (python encoders), else its tokenizer's
    (native encoders take no parameters of ours)."""
    for suffix in ("_encoder", "_tokenizer"):
        config = Path(repository) / f"{model}{suffix}" / "config.pbtxt"
        if config.is_file() and "max_seq_length" in (params := read_config_parameters(config)):
            return int(params["max_seq_length"])
    raise SystemExit(f"{repository} has no {model}_encoder or {model}_tokenizer with a max_seq_length")


if __name__ == "__main__":
    sys.exit(main())
