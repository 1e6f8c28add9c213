"""GPU latency of exported subnets on a machine without TensorRT, with PyTorch CUDA.

The gpu target of `ofaserve repo` serves the ONNX export with TensorRT FP16 (Triton's
onnxruntime backend, or onnxruntime-gpu's TensorRT EP). Where a GPU machine has neither
TensorRT nor onnxruntime-gpu but has PyTorch (e.g. an offline machine with a PyTorch
image and a small transfer limit), this gives the next best measured figure: the
same exported weights run as a plain BERT forward on CUDA, FP32 and FP16, each call
replayed from a CUDA graph (like an engine: no per-kernel launch cost from Python),
compared for parity with the export's own ONNX logits before anything is timed.

Two steps, because the GPU machine has no paddle, no onnxruntime-gpu and no dataset:

  pack  (here, in the project's venv)
        python -m benchmarks.records.gpu_torch pack --export_dirs runs/x/export/w1.0 runs/x/export/w0.6667 \
            --output runs/gpu_pack
        writes the sub-model weights (fp32; a tensor that is a leading slice of the same
        tensor of an earlier export is stored as a reference to it; word-embedding rows
        only for the tokens the packed inputs use), every dev sentence tokenized in seeded
        batches of 16, fixed-length token batches drawn from those tokens, and each
        export's ONNX logits (ONNX Runtime CPU, fp32) on the dev batches.
  run   (on the GPU machine: numpy + torch only, nothing else from this project)
        python -m benchmarks.records.gpu_torch run --pack runs/gpu_pack --output report.json
        parity per model and precision (max abs logit diff vs the ONNX logits, predictions
        agreeing, dev accuracy), then latency per workload (p50/p90/p99 of host-timed calls:
        copy in, graph replay, copy out) with models interleaved round by round, and the
        full-width / compressed ratio per workload; writes report.json and report.md.

This is not the TensorRT figure: it is recorded as what it is.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PACK_FORMAT = "ofaserve-gpu-pack/1"
PACK_STAGE = "gpu_pack"  # the manifest's stage: a later pack may replace the folder
WORD = "bert.embeddings.word_embeddings.weight"
POS = "bert.embeddings.position_embeddings.weight"
TYPE = "bert.embeddings.token_type_embeddings.weight"
MASK_VALUE = -1e4  # PaddleNLP BERT's additive padding mask (what the export computes)


# ============================================================================ the forward
class _HeadOps:
    """Splitting hidden states into attention heads and back, over each backend's permute."""

    @classmethod
    def heads(cls, x, n):
        b, s, h = x.shape
        return cls.permute(x.reshape(b, s, n, h // n), (0, 2, 1, 3))

    @classmethod
    def merge(cls, x):
        b, n, s, d = x.shape
        return cls.permute(x, (0, 2, 1, 3)).reshape(b, s, n * d)


class NumpyOps(_HeadOps):
    """Reference arithmetic, used here to check the forward against the ONNX export."""

    @staticmethod
    def layer_norm(x, w, b, eps):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w + b

    @staticmethod
    def gelu(x):
        from scipy.special import erf
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))

    @staticmethod
    def permute(x, axes):
        return x.transpose(axes)

    @staticmethod
    def attention(q, k, v, mask):
        a = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1]) + mask
        a = np.exp(a - a.max(-1, keepdims=True))
        return (a / a.sum(-1, keepdims=True)) @ v

    @staticmethod
    def pad_mask(ids, pad_id, dtype):
        return np.where(ids == pad_id, MASK_VALUE, 0.0).astype(dtype)[:, None, None, :]

    tanh = staticmethod(np.tanh)

    @staticmethod
    def embed(table, ids):
        return table[ids]


class TorchOps(_HeadOps):
    """The same operations with torch's fused kernels (SDPA, layer_norm, erf gelu)."""

    def __init__(self):
        import torch
        import torch.nn.functional as F
        self.torch, self.F = torch, F

    def layer_norm(self, x, w, b, eps):
        return self.F.layer_norm(x, (x.shape[-1],), w, b, eps)

    def gelu(self, x):
        return self.F.gelu(x)

    @staticmethod
    def permute(x, axes):
        return x.permute(*axes)

    def attention(self, q, k, v, mask):
        return self.F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def pad_mask(self, ids, pad_id, dtype):
        return ((ids == pad_id).to(dtype) * MASK_VALUE)[:, None, None, :]

    def tanh(self, x):
        return self.torch.tanh(x)

    def embed(self, table, ids):
        return self.F.embedding(ids, table)


def bert_logits(P: dict, cfg: dict, ids, types, ops) -> Any:
    """BertForSequenceClassification (PaddleNLP layout: Linear y = x W + b, post-LN) of an
    ofaserve sub-model: per-layer head counts and FFN sizes from ``cfg["layers"]``."""
    base = cfg["base_config"]
    eps = base["layer_norm_eps"]
    s = ids.shape[1]
    x = ops.embed(P[WORD], ids) + P[POS][:s] + ops.embed(P[TYPE], types)
    x = ops.layer_norm(x, P["bert.embeddings.layer_norm.weight"], P["bert.embeddings.layer_norm.bias"], eps)
    mask = ops.pad_mask(ids, base["pad_token_id"], x.dtype)

    def lin(t, name):
        return t @ P[name + ".weight"] + P[name + ".bias"]

    for i, layer in enumerate(cfg["layers"]):
        p = f"bert.encoder.layers.{i}."
        n = layer["num_heads"]
        q, k, v = (ops.heads(lin(x, p + f"self_attn.{m}_proj"), n) for m in ("q", "k", "v"))
        ctx = ops.merge(ops.attention(q, k, v, mask))
        x = ops.layer_norm(x + lin(ctx, p + "self_attn.out_proj"), P[p + "norm1.weight"], P[p + "norm1.bias"], eps)
        h = lin(ops.gelu(lin(x, p + "linear1")), p + "linear2")
        x = ops.layer_norm(x + h, P[p + "norm2.weight"], P[p + "norm2.bias"], eps)
    pooled = ops.tanh(lin(x[:, 0], "bert.pooler.dense"))
    return lin(pooled, "classifier")


# ============================================================================ pack (here)
def _leading_slice(small: np.ndarray, big: np.ndarray) -> bool:
    return (small.ndim == big.ndim and all(a <= b for a, b in zip(small.shape, big.shape))
            and np.array_equal(small, big[tuple(slice(0, n) for n in small.shape)]))


def pack(export_dirs: list[str], output: str, batch_size: int, seq_len: int, big_batch: int,
         seed: int, overwrite: bool = False) -> dict[str, Any]:
    """Write the pack to ``output``: a new or empty folder, a previous pack, or with
    ``overwrite`` anything else (checked and locked before any work)."""
    from ofaserve.core.outputs import check_output_dir, output_lock

    check_output_dir(output, stage=PACK_STAGE, overwrite=overwrite, inputs=export_dirs)
    with output_lock(output):
        return _pack(export_dirs, output, batch_size, seq_len, big_batch, seed)


def _pack(export_dirs: list[str], output: str, batch_size: int, seq_len: int, big_batch: int,
          seed: int) -> dict[str, Any]:
    """What ``pack`` writes, once its output is checked and locked."""
    import pickle

    from ofaserve.core.errors import OfaserveError
    from ofaserve.core.machine import machine_info
    from ofaserve.core.manifests import now_iso, read_manifest
    from ofaserve.core.files import write_json
    from ofaserve.core.outputs import atomic_output_dir
    from ofaserve.core.manifests import CompressManifest
    from ofaserve.core.tokenizer import load_tokenizer
    from ofaserve.runtime.runtimes import load_runner

    manifests = [read_manifest(d, stage="export") for d in export_dirs]
    first = manifests[0]
    for m in manifests[1:]:
        if m["source"]["compress_dir"] != first["source"]["compress_dir"]:
            raise OfaserveError("pack exports of one compress output (the same task and dev sentences)")
        if m["max_seq_length"] != first["max_seq_length"]:
            raise OfaserveError("the exports truncate differently (max_seq_length); re-export one of them")
    # the dev split the compress stage evaluated on, read from its manifest (csv tasks too)
    dev = CompressManifest.read(first["source"]["compress_dir"]).split("dev")
    texts, labels = dev.texts, dev.labels
    tok = load_tokenizer(Path(export_dirs[0]) / first["artifacts"]["tokenizer"], first["max_seq_length"])
    pad = first["pad_token_id"]
    # every dev sentence, in the benchmark's seeded batches (the last partial batch too)
    order = np.random.default_rng(seed).permutation(len(texts))
    real = {}
    for bi, start in enumerate(range(0, len(texts), batch_size)):
        idx = order[start:start + batch_size]
        encs = tok.encode_batch([texts[j] for j in idx])
        width = max(len(e.ids) for e in encs)
        real[f"ids_{bi}"] = np.array([e.ids + [pad] * (width - len(e.ids)) for e in encs], dtype=np.int64)
        real[f"types_{bi}"] = np.array([e.type_ids + [0] * (width - len(e.ids)) for e in encs], dtype=np.int64)
        real[f"labels_{bi}"] = np.asarray([labels[j] for j in idx], dtype=np.int64)
    n_real = bi + 1
    used = np.unique(np.concatenate([real[f"ids_{i}"].ravel() for i in range(n_real)]))
    words = used[used >= 1000] if (used >= 1000).sum() > 100 else used[used != pad]
    rng = np.random.default_rng(seed)
    fixed = {f"fixed_{b}": rng.choice(words, size=(b, seq_len)).astype(np.int64) for b in (batch_size, big_batch)}

    with atomic_output_dir(output) as tmp:
        entries = []
        stored: list[tuple[str, dict[str, np.ndarray]]] = []
        for d, m in zip(export_dirs, manifests):
            name = f"w{m['width']}"
            sub = Path(d) / m["artifacts"]["sub_model"]
            cfg = json.loads((sub / "model_config.json").read_text())
            with open(sub / "model_state.pdparams", "rb") as f:
                state = {k: np.asarray(v) for k, v in pickle.load(f).items()}
            reference = load_runner("onnxruntime", Path(d) / m["artifacts"]["onnx"])
            ref_logits = {f"logits_{i}": reference(real[f"ids_{i}"], real[f"types_{i}"]) for i in range(n_real)}
            # the forward written above must reproduce the export before it goes anywhere
            check = bert_logits(state, cfg, real["ids_0"], real["types_0"], NumpyOps)
            diff = float(np.abs(check - ref_logits["logits_0"]).max())
            if diff > 1e-4:
                raise OfaserveError(f"{name}: numpy forward differs from the export's ONNX by {diff:.2e}")
            tensors = {k: v for k, v in state.items() if k != WORD}
            tensors["word_rows"], tensors["word_row_ids"] = state[WORD][used], used
            keep, sliced = {}, {}
            for k, v in tensors.items():
                src = next((n for n, s in stored if k in s and _leading_slice(v, s[k])), None)
                if src:
                    sliced[k] = {"of": src, "shape": list(v.shape)}
                else:
                    keep[k] = v
            np.savez(tmp / f"{name}.npz", **keep)
            np.savez(tmp / f"{name}_reference.npz", **ref_logits)
            stored.append((name, keep))
            entries.append({"name": name, "width": m["width"], "export_dir": str(d), "weights": f"{name}.npz",
                            "reference": f"{name}_reference.npz", "sub_config": cfg, "sliced": sliced,
                            "vocab_size": int(state[WORD].shape[0]),
                            "export_dev_accuracy": m.get("dev_accuracy"),
                            "numpy_forward_vs_onnx_max_abs": diff,
                            "onnx_sha256": m.get("onnx", {}).get("sha256")})
        np.savez(tmp / "inputs.npz", **real, **fixed)
        manifest = {"stage": PACK_STAGE, "format": PACK_FORMAT, "created": now_iso(), "machine": machine_info(),
                    "task": first["source"]["task"], "labels": first["labels"], "pad_token_id": pad,
                    "batch_size": batch_size, "seq_len": seq_len, "big_batch": big_batch, "seed": seed,
                    "n_real_batches": n_real, "dev_sentences": len(texts),
                    "max_seq_length": first["max_seq_length"], "used_vocab_rows": int(len(used)),
                    "fixed_ids": "drawn from the tokens of the dev sentences (only their embedding rows travel)",
                    "models": entries,
                    "command": " ".join(["python -m benchmarks.records.gpu_torch", *sys.argv[1:]])}
        write_json(tmp / "manifest.json", manifest)
    return manifest


# ============================================================================ run (GPU)
def load_pack_weights(pack_dir: Path, manifest: dict) -> dict[str, tuple[dict[str, np.ndarray], dict]]:
    """Each packed model's full state dict (numpy) and sub-model config, slices resolved
    and the word-embedding table rebuilt at full size (rows no packed input uses are 0)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for e in manifest["models"]:
        with np.load(pack_dir / e["weights"]) as z:
            w = {k: z[k] for k in z.files}
        for k, s in e["sliced"].items():
            w[k] = out[s["of"]][k][tuple(slice(0, n) for n in s["shape"])]
        out[e["name"]] = w
    models = {}
    for e in manifest["models"]:
        w = dict(out[e["name"]])
        table = np.zeros((e["vocab_size"], w["word_rows"].shape[1]), dtype=w["word_rows"].dtype)
        table[w.pop("word_row_ids")] = w.pop("word_rows")
        w[WORD] = table
        models[e["name"]] = (w, e["sub_config"])
    return models


class GraphedModel:
    """One CUDA graph per input shape; a call copies inputs in, replays, copies logits out."""

    def __init__(self, params, cfg, dtype, torch, ops):
        self.P = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in params.items()}
        self.cfg, self.torch, self.ops, self.graphs = cfg, torch, ops, {}

    def forward(self, ids, types):
        return bert_logits(self.P, self.cfg, ids, types, self.ops)

    def _graph(self, shape):
        torch = self.torch
        if shape not in self.graphs:
            ids = torch.zeros(shape, dtype=torch.int64, device="cuda")
            types = torch.zeros(shape, dtype=torch.int64, device="cuda")
            ids[:, 0] = 101
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):
                    self.forward(ids, types)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.no_grad():
                out = self.forward(ids, types)
            self.graphs[shape] = (graph, ids, types, out)
        return self.graphs[shape]

    def __call__(self, ids: np.ndarray, types: np.ndarray) -> np.ndarray:
        graph, gi, gt, out = self._graph(tuple(ids.shape))
        gi.copy_(self.torch.from_numpy(ids), non_blocking=False)
        gt.copy_(self.torch.from_numpy(types), non_blocking=False)
        graph.replay()
        return out.float().cpu().numpy()


def _pad_to(ids: np.ndarray, types: np.ndarray, multiple: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    s = ids.shape[1]
    target = -(-s // multiple) * multiple
    if target == s:
        return ids, types
    extra = target - s
    return (np.pad(ids, ((0, 0), (0, extra)), constant_values=pad),
            np.pad(types, ((0, 0), (0, extra)), constant_values=0))


def _stats(samples_ms: list[float], batch: float) -> dict[str, float]:
    from ofaserve.benchmarks.stats import summarize_latencies  # numpy only: runs on the GPU machine too

    s = summarize_latencies(samples_ms)
    return {"n": s["n"], "p50_ms": s["p50"], "p90_ms": s["p90"], "p99_ms": s["p99"], "mean_ms": s["mean"],
            "sentences_per_s": float(batch * s["n"] / (sum(samples_ms) / 1000.0))}


def _environment(torch) -> dict[str, Any]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0), "numpy": np.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count()}
    for mod in ("tensorrt", "onnxruntime"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "?")
            if mod == "onnxruntime":
                env["onnxruntime_providers"] = m.get_available_providers()
        except Exception as e:  # what the machine lacks is part of the record
            env[mod] = f"not available ({type(e).__name__}: {e})"
    return env


def run(pack_dir: str, output: str, rounds: int, per_round: int, pad_multiple: int) -> dict[str, Any]:
    import torch

    pack_dir = Path(pack_dir)
    manifest = json.loads((pack_dir / "manifest.json").read_text())
    if manifest.get("format") != PACK_FORMAT:
        raise SystemExit(f"{pack_dir} is not a gpu pack (format {manifest.get('format')!r})")
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on the GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    ops = TorchOps()
    with np.load(pack_dir / "inputs.npz") as z:
        inputs = {k: z[k] for k in z.files}
    pad = manifest["pad_token_id"]
    n_real = manifest["n_real_batches"]
    base = {m: ({k: torch.from_numpy(np.ascontiguousarray(v)).to("cuda") for k, v in w.items()}, cfg)
            for m, (w, cfg) in load_pack_weights(pack_dir, manifest).items()}
    precisions = {"fp32": torch.float32, "fp16": torch.float16}
    variants = {(m, p): GraphedModel(params, cfg, dt, torch, ops)
                for m, (params, cfg) in base.items() for p, dt in precisions.items()}

    record: dict[str, Any] = {"environment": _environment(torch), "pack": {k: manifest[k] for k in (
        "created", "task", "batch_size", "seq_len", "big_batch", "seed", "n_real_batches", "dev_sentences",
        "max_seq_length", "used_vocab_rows", "fixed_ids")}, "pack_command": manifest.get("command"),
        "pad_multiple": pad_multiple,
        "models": {e["name"]: {"width": e["width"], "export_dev_accuracy": e["export_dev_accuracy"],
                               "sub_config": {"num_heads": [l["num_heads"] for l in e["sub_config"]["layers"]],
                                              "intermediate_size": [l["intermediate_size"]
                                                                    for l in e["sub_config"]["layers"]]}}
                   for e in manifest["models"]},
        "parity": {}, "latency": {}}
    # ---- parity first: every dev batch (padded to the multiple, as the gpu target pads)
    for (m, p), fn in variants.items():
        with np.load(pack_dir / f"{m}_reference.npz") as z:
            ref = [z[f"logits_{i}"] for i in range(n_real)]
        got = [fn(*_pad_to(inputs[f"ids_{i}"], inputs[f"types_{i}"], pad_multiple, pad)) for i in range(n_real)]
        got, ref = np.concatenate(got), np.concatenate(ref)
        gold = np.concatenate([inputs[f"labels_{i}"] for i in range(n_real)])
        record["parity"][f"{m}/{p}"] = {
            "max_abs_logits_diff_vs_onnx": float(np.abs(got - ref).max()),
            "predictions_agreeing": float((got.argmax(-1) == ref.argmax(-1)).mean()),
            "dev_accuracy": float((got.argmax(-1) == gold).mean()),
            "onnx_dev_accuracy": float((ref.argmax(-1) == gold).mean())}
        print(f"parity {m}/{p}: {record['parity'][f'{m}/{p}']}", flush=True)
    # ---- latency: models interleaved round by round so drift hits all alike
    bs = manifest["batch_size"]
    workloads = {
        f"fixed_{bs}x{manifest['seq_len']}": [(inputs[f"fixed_{bs}"], np.zeros_like(inputs[f"fixed_{bs}"]))],
        f"fixed_{manifest['big_batch']}x{manifest['seq_len']}": [
            (inputs[f"fixed_{manifest['big_batch']}"], np.zeros_like(inputs[f"fixed_{manifest['big_batch']}"]))],
        f"real_text_{bs}": [_pad_to(inputs[f"ids_{i}"], inputs[f"types_{i}"], pad_multiple, pad)
                             for i in range(n_real) if inputs[f"ids_{i}"].shape[0] == bs]}
    for wname, batches in workloads.items():
        samples: dict[tuple[str, str], list[float]] = {k: [] for k in variants}
        for fn in variants.values():  # capture every graph before timing
            for b in batches:
                fn(*b)
        torch.cuda.synchronize()
        for r in range(rounds):
            for key, fn in variants.items():
                for j in range(per_round):
                    ids, types = batches[(r * per_round + j) % len(batches)]
                    t0 = time.perf_counter()
                    fn(ids, types)  # .cpu() inside synchronizes
                    samples[key].append((time.perf_counter() - t0) * 1000.0)
        rows = batches[0][0].shape[0]
        record["latency"][wname] = {f"{m}/{p}": _stats(s, rows) for (m, p), s in samples.items()}
        if wname.startswith("real"):
            record["latency"][wname]["mean_padded_len"] = float(np.mean([b[0].shape[1] for b in batches]))
        print(f"latency {wname}: " + ", ".join(f"{k} p50 {v['p50_ms']:.3f} ms" for k, v in
                                               record["latency"][wname].items() if isinstance(v, dict)), flush=True)
    names = [e["name"] for e in manifest["models"]]
    full, small = names[0], names[-1]
    record["ratios_p50_full_over_compressed"] = {
        w: {p: lat[f"{full}/{p}"]["p50_ms"] / lat[f"{small}/{p}"]["p50_ms"] for p in precisions}
        for w, lat in record["latency"].items()}
    record["fp32_over_fp16_p50"] = {
        w: {m: lat[f"{m}/fp32"]["p50_ms"] / lat[f"{m}/fp16"]["p50_ms"] for m in names}
        for w, lat in record["latency"].items()}
    record["command"] = " ".join(["python -m benchmarks.records.gpu_torch", *sys.argv[1:]])
    record["date"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    out.with_suffix(".md").write_text(markdown(record))
    return record


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    names = list(r["models"])
    lines = [f"# GPU latency with PyTorch CUDA (not TensorRT) - {env['gpu']}", "",
             f"{r['date']}; torch {env['torch']} (CUDA {env['cuda']}), python {env['python']}. "
             f"TensorRT: {env['tensorrt']}. onnxruntime: {env.get('onnxruntime')} "
             f"{env.get('onnxruntime_providers', '')}.", "",
             "Each call: inputs copied to the GPU, the model's CUDA graph for that shape replayed, logits "
             "copied back (host-timed). fp32 has TF32 off. Real text: every full batch of 16 dev sentences, "
             f"padded to the batch's longest, then to a multiple of {r['pad_multiple']} (as the gpu target pads).",
             "", "## Parity with the export's ONNX (ONNX Runtime CPU fp32), all dev sentences", "",
             "| model/precision | max abs logit diff | predictions agreeing | dev accuracy | ONNX dev accuracy |",
             "|---|---|---|---|---|"]
    for k, v in r["parity"].items():
        lines.append(f"| {k} | {v['max_abs_logits_diff_vs_onnx']:.2e} | {v['predictions_agreeing']:.4f} | "
                     f"{v['dev_accuracy']:.4f} | {v['onnx_dev_accuracy']:.4f} |")
    lines += ["", "## Latency (ms) and throughput", "",
              "| workload | model/precision | p50 | p90 | p99 | sentences/s |", "|---|---|---|---|---|---|"]
    for w, lat in r["latency"].items():
        for k, v in lat.items():
            if isinstance(v, dict):
                lines.append(f"| {w} | {k} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | {v['p99_ms']:.3f} | "
                             f"{v['sentences_per_s']:.0f} |")
    lines += ["", f"## Full width / compressed (p50): {names[0]} / {names[-1]}", "",
              "| workload | fp32 | fp16 |", "|---|---|---|"]
    for w, v in r["ratios_p50_full_over_compressed"].items():
        lines.append(f"| {w} | {v['fp32']:.2f}x | {v['fp16']:.2f}x |")
    lines += ["", "## fp32 / fp16 (p50)", "", "| workload | " + " | ".join(names) + " |",
              "|---|" + "---|" * len(names)]
    for w, v in r["fp32_over_fp16_p50"].items():
        lines.append(f"| {w} | " + " | ".join(f"{v[m]:.2f}x" for m in names) + " |")
    if r.get("pack_command"):
        lines += ["", f"Pack (on the CPU machine): `{r['pack_command']}`"]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.records.gpu_torch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("pack", help="(here) weights, tokenized dev batches and ONNX reference logits to one folder")
    a.add_argument("--export_dirs", nargs="+", required=True,
                   help="export folders, full width first (the ratio is first / last)")
    a.add_argument("--output", required=True,
                   help="pack folder to write (written whole or not at all): new, empty or a previous pack")
    a.add_argument("--overwrite", action="store_true",
                   help="replace --output even if it holds something other than a previous pack")
    a.add_argument("--batch_size", type=int, default=16, help="sentences per batch (default 16)")
    a.add_argument("--seq_len", type=int, default=128, help="fixed-length workload's tokens (default 128)")
    a.add_argument("--big_batch", type=int, default=256, help="rows of the large fixed batch (default 256)")
    a.add_argument("--seed", type=int, default=0, help="seed of the batch order and fixed ids (default 0)")
    b = sub.add_parser("run", help="(GPU machine) parity, then latency; writes JSON and Markdown")
    b.add_argument("--pack", required=True, help="folder written by the pack step")
    b.add_argument("--output", required=True, help="report JSON path (the .md goes beside it)")
    b.add_argument("--rounds", type=int, default=5, help="interleaved rounds per workload (default 5)")
    b.add_argument("--per_round", type=int, default=100, help="timed calls per model per round (default 100)")
    b.add_argument("--pad_multiple", type=int, default=16, help="pad real-text batches to this (default 16)")
    args = p.parse_args(argv)
    if args.step == "pack":
        from ofaserve.core.errors import OfaserveError
        try:
            m = pack(args.export_dirs, args.output, args.batch_size, args.seq_len, args.big_batch, args.seed,
                     overwrite=args.overwrite)
        except OfaserveError as e:
            print(f"benchmarks.gpu_torch: error: {e}", file=sys.stderr)
            return 2
        size = sum(f.stat().st_size for f in Path(args.output).iterdir())
        print(f"packed {[e['name'] for e in m['models']]} into {args.output} ({size / 2**20:.1f} MiB); "
              f"numpy forward vs ONNX: " + ", ".join(f"{e['name']} {e['numpy_forward_vs_onnx_max_abs']:.1e}"
                                                      for e in m["models"]))
    else:
        run(args.pack, args.output, args.rounds, args.per_round, args.pad_multiple)
    return 0


if __name__ == "__main__":
    sys.exit(main())
