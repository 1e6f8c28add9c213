"""What ``ofaserve bench`` asks of the Triton server it measures, over gRPC: is it live, which
models does it serve and how are they configured (with the repository's manifest where one is
at hand), how many requests has each handled, the in-process twin of a model's tokenizer, and the versions
of the server and the client stack a report names."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.benchmarks import inprocess, stats
from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import RepoManifest, RepoModel
from ofaserve.serve.server import KEY_ENV, admin_headers


def short_error(e: BaseException) -> str:
    msg = getattr(e, "message", None)
    msg = msg() if callable(msg) else (msg or str(e))
    return " ".join(str(msg).split())[:200]


def connect(url: str, timeout: float = 10.0):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException
    try:
        client = grpcclient.InferenceServerClient(url)
        live = client.is_server_live(client_timeout=timeout)
    except (InferenceServerException, ValueError, OSError) as e:
        raise OfaserveError(f"Triton server not reachable at {url} over gRPC ({short_error(e)}); start one "
                            "(`ofaserve serve`) or pass --start_server --model_repository DIR") from e
    if not live:
        raise OfaserveError(f"Triton server at {url} answers but is not live")
    return client


def repository_index(client, url: str) -> dict[str, str]:
    """{model: state}. The index is an API `ofaserve serve` restricts: the key comes from
    the key file of a server this user runs here, or from $OFASERVE_TRITON_KEY."""
    from tritonclient.utils import InferenceServerException
    try:
        idx = client.get_model_repository_index(headers=admin_headers(url), as_json=True).get("models", []) or []
    except InferenceServerException as e:
        raise OfaserveError(f"the server at {url} refused its model index ({short_error(e)}): "
                            f"set {KEY_ENV} to the server's key") from e
    out: dict[str, str] = {}
    for m in idx:
        out[m["name"]] = m.get("state", "") or out.get(m["name"], "")
    return out


def discover_models(index: dict[str, str]) -> list[str]:
    return sorted(n[: -len("_encoder")] for n in index if n.endswith("_encoder") and n != "_encoder")


def check_models(client, index: dict[str, str], models: list[str], workloads: list[str]) -> None:
    need = []
    for m in models:
        if "fixed" in workloads:
            need.append(f"{m}_encoder")
        if "real" in workloads:
            need.append(m)
    for name in need:
        if name not in index:
            avail = ", ".join(sorted(index)) or "none"
            raise OfaserveError(f"model {name!r} not found in the server's repository (available: {avail})")
        if not client.is_model_ready(name):
            raise OfaserveError(f"model {name!r} is not ready on the server (state {index.get(name) or 'unknown'}); "
                                "check the server log")


def read_repo_manifest(repo: Path | None) -> RepoManifest | None:
    """The repository's manifest, or None (no --model_repository, or a repository ofaserve did not write)."""
    if repo is None or not (repo / "manifest.json").is_file():
        return None
    try:
        return RepoManifest.read(repo)
    except OfaserveError:
        return None


def model_info(client, m: str, repo: Path | None, repo_manifest: RepoManifest | None) -> dict[str, Any]:
    info: dict[str, Any] = {"encoder": f"{m}_encoder", "ensemble": m}
    enc_cfg = client.get_model_config(f"{m}_encoder", as_json=True).get("config", {})
    params = inprocess.config_params_from_json(enc_cfg)
    spec = inprocess.spec_from_config(enc_cfg)
    info.update(encoder_backend=enc_cfg.get("backend") or enc_cfg.get("platform"),
                encoder_parameters=params, runtime=spec.runtime, precision=spec.precision,
                threads=spec.threads, runtime_label=spec.label,
                max_batch_size=int(enc_cfg.get("max_batch_size", 0) or 0),
                instances=[{"count": int(g.get("count", 1) or 1), "kind": g.get("kind")}
                           for g in enc_cfg.get("instance_group", []) or []],
                dynamic_batching=enc_cfg.get("dynamic_batching") is not None)
    sources = {"encoder config": params.get("width_mult"),
               "repository manifest": served.width_mult if (served := repo_model(repo_manifest, m)) else None}
    info["width_source"], width = next(((k, v) for k, v in sources.items() if v not in (None, "")), (None, None))
    info["width"] = float(width) if width is not None else None
    depth = params.get("depth_mult") or (served.depth_mult if (served := repo_model(repo_manifest, m)) else None)
    info["depth"] = float(depth) if depth not in (None, "") else 1.0
    try:
        ens = client.get_model_config(m, as_json=True).get("config", {})
        steps = (ens.get("ensemble_scheduling") or {}).get("step", []) or []
        info["composing"] = [st.get("model_name") for st in steps if st.get("model_name")]
    except Exception:
        info["composing"] = []
    info["vocab_size"] = _int_or_none(params.get("vocab_size"))
    info["max_seq_length"] = _int_or_none(params.get("max_seq_length")) or _int_or_none(
        served.max_seq_length if (served := repo_model(repo_manifest, m)) else None)
    return info


def repo_model(manifest: RepoManifest | None, model: str) -> RepoModel | None:
    return manifest.models.get(model) if manifest is not None else None


def _int_or_none(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def real_text_encoder(m: str, repo: Path, pad_to: int | None = None):
    """The in-process twin of the server's tokenization (``{m}_tokenizer`` of an ensemble, or
    the fused text model ``{m}``): its tokenizer.json, truncation and padding (to the
    batch's longest, rounded up to ``pad_to_multiple_of``), as the server does it; with
    ``pad_to``, every batch truncated and padded to that many tokens instead (the tutorial's
    padding)."""
    tok_dir = repo / f"{m}_tokenizer"
    if not tok_dir.is_dir() and (repo / m / "1" / "tokenizer.json").is_file():
        tok_dir = repo / m
    if not (tok_dir / "config.pbtxt").is_file():
        raise OfaserveError(f"{tok_dir}/config.pbtxt is missing")
    params = inprocess.read_config_parameters(tok_dir / "config.pbtxt")
    path = tok_dir / "1" / params.get("tokenizer_file", "tokenizer.json")
    if not path.is_file():
        raise OfaserveError(f"{path} is missing")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(path))
    pad_id = int(params.get("pad_token_id", 0) or 0)
    max_len = int(params.get("max_seq_length", 128))
    if pad_to is not None and pad_to > max_len:
        raise OfaserveError(f"{m} reads at most {max_len} tokens: cannot pad to {pad_to}")
    tok.enable_truncation(max_length=pad_to or max_len)
    tok.enable_padding(pad_id=pad_id, pad_token=tok.id_to_token(pad_id) or "[PAD]", length=pad_to,
                       pad_to_multiple_of=None if pad_to else int(params.get("pad_to_multiple_of", 0) or 0) or None)

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        enc = tok.encode_batch(list(texts), add_special_tokens=True)
        return (np.array([e.ids for e in enc], dtype=np.int64), np.array([e.type_ids for e in enc], dtype=np.int64))
    return encode


def snapshot(client) -> dict[str, dict[str, int]]:
    return stats.flatten_model_stats(client.get_inference_statistics(as_json=True))


def handled(snap: dict[str, dict[str, int]], model: str) -> int:
    d = snap.get(model, {})
    return d.get("success_count", 0) + d.get("fail_count", 0)


def settled_snapshot(client, model: str, expect_at_least: int | None = None,
                     timeout: float = 3.0) -> dict[str, dict[str, int]]:
    """Triton records a request's statistics when it releases the request, which can be
    just after the client got its answer: poll until ``model`` has counted at least
    ``expect_at_least`` requests and two snapshots 5 ms apart agree."""
    deadline = time.perf_counter() + timeout
    prev = snapshot(client)
    while True:
        time.sleep(0.005)
        cur = snapshot(client)
        done = cur == prev and (expect_at_least is None or handled(cur, model) >= expect_at_least)
        if done or time.perf_counter() > deadline:
            return cur
        prev = cur


def versions(server_version: str | None) -> dict[str, str]:
    from importlib import metadata
    out = {"python": sys.version.split()[0]}
    for pkg in ("tritonclient", "numpy", "onnxruntime", "openvino", "paddlepaddle", "nvidia-pytriton"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    if server_version:
        out["triton_server"] = server_version
    return out
