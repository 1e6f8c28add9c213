"""The standalone sub model: a plain PaddleNLP BERT classifier with narrower layers.

``model_config.json`` holds the full PaddleNLP ``BertConfig`` kwargs plus, per layer,
the number of heads kept, the head size and the FFN size; a subnet of depth < 1 has fewer
layers (its ``base_config`` says how many) and records which layers of the supernet they
are (``kept_layers``, of ``source_num_hidden_layers``). ``build_sub_model`` builds
``BertForSequenceClassification`` from the full config, then replaces each layer's
q/k/v/out projections and FFN linears with narrower ones AND sets the attention's
``num_heads`` (the tutorial's users got garbage logits when the head count was left
at the full-width value). ``load_sub_model`` checks every tensor's shape against the
config before loading, so a mismatched config cannot silently produce wrong logits.
No OFA patch is needed (or allowed) here: this is what runs in a fresh process.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.width import TOLERANCE
from ofaserve.compress.bert import build_classifier

FORMAT = "ofaserve-bert-sub-model/1"
CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model_state.pdparams"


# ----------------------------------------------------------------------------- config
def fit_widths(widths: list[float], base_config: dict[str, Any]) -> list[float]:
    """``widths`` as exact fractions of this model's heads (0.6667 of 12 heads: 8/12), or one
    error naming widths that fit.

    Each width must keep whole attention heads: PaddleSlim slices the q/k/v projections to
    ``int(width * hidden_size)`` outputs, which the attention then splits into heads of the
    full model's head size. It must also be the exact fraction: PaddleNLP's OFA attention
    narrows ``num_heads`` to ``int(num_heads * width)`` and restores it as
    ``int(num_heads / width)``, which a rounded width (8 / 0.6667 = 11.9994) truncates to one
    head fewer, and the next narrower width then splits its projection into the wrong heads."""
    hidden, heads = int(base_config["hidden_size"]), int(base_config["num_attention_heads"])
    head_dim = hidden // heads
    exact = {w: round(w * heads) / heads for w in widths}
    bad = [w for w, e in exact.items() if abs(w - e) >= TOLERANCE or e <= 0 or int(e * hidden) % head_dim]
    if bad:
        fitting = " ".join(f"{w:.4g}" for w in (1.0, 5 / 6, 3 / 4, 2 / 3, 1 / 2, 1 / 4) if not int(w * hidden) % head_dim)
        raise OfaserveError(
            f"width(s) {', '.join(f'{w:.4g}' for w in bad)} keep part of an attention head of this model "
            f"({heads} heads of {head_dim} in {hidden}: width x {hidden} must be a multiple of {head_dim}); "
            f"use widths that are multiples of 1/{heads}, e.g. {fitting}")
    return [exact[w] for w in widths]


def sub_config_from_state(base_config: dict[str, Any], state: dict[str, Any], width_mult: float) -> dict[str, Any]:
    """Per-layer heads / head_dim / FFN size read off the sliced weights' shapes."""
    hidden = int(base_config["hidden_size"])
    n_heads = int(base_config["num_attention_heads"])
    if hidden % n_heads:
        raise OfaserveError(f"hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")
    head_dim = hidden // n_heads
    layers = []
    for i in range(int(base_config["num_hidden_layers"])):
        p = f"bert.encoder.layers.{i}."
        try:
            q = tuple(np.shape(state[p + "self_attn.q_proj.weight"]))
            f = tuple(np.shape(state[p + "linear1.weight"]))
        except KeyError as e:
            raise OfaserveError(f"sliced weights lack {e}: not a BERT classifier state dict") from e
        if q[1] % head_dim:
            raise OfaserveError(f"layer {i}: q_proj keeps {q[1]} columns, not a whole number of "
                                f"{head_dim}-wide heads (width {width_mult})")
        layers.append({"num_heads": q[1] // head_dim, "head_dim": head_dim, "intermediate_size": int(f[1])})
    return {"format": FORMAT, "width_mult": float(width_mult), "base_config": dict(base_config), "layers": layers}


def keep_layers(cfg: dict[str, Any], state: dict[str, np.ndarray], kept: list[int],
                depth_mult: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A full-depth sub model (config, weights) cut to the encoder layers ``kept`` (in order,
    renumbered 0..n-1): a plain BERT with fewer layers, which computes what the supernet
    computes at that depth (its encoder runs exactly those layers in that order)."""
    n = int(cfg["base_config"]["num_hidden_layers"])
    if not kept or sorted(set(kept)) != list(kept) or kept[-1] >= n or kept[0] < 0:
        raise OfaserveError(f"cannot keep layers {kept} of {n}: they must be increasing indices below {n}")
    prefix = "bert.encoder.layers."
    renumber = {old: new for new, old in enumerate(kept)}
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not name.startswith(prefix):
            out[name] = value
            continue
        index, rest = name[len(prefix):].split(".", 1)
        if int(index) in renumber:
            out[f"{prefix}{renumber[int(index)]}.{rest}"] = value
    base = {**cfg["base_config"], "num_hidden_layers": len(kept)}
    return ({**cfg, "base_config": base, "layers": [cfg["layers"][i] for i in kept], "depth_mult": float(depth_mult),
             "kept_layers": list(kept), "source_num_hidden_layers": n}, out)


def _check_config(cfg: dict[str, Any], where: str) -> None:
    if cfg.get("format") != FORMAT:
        raise OfaserveError(f"{where} is not an ofaserve sub model config (format {cfg.get('format')!r}, "
                            f"expected {FORMAT!r})")
    base = cfg.get("base_config") or {}
    layers = cfg.get("layers") or []
    if len(layers) != int(base.get("num_hidden_layers", -1)):
        raise OfaserveError(f"{where}: {len(layers)} layer entries but num_hidden_layers="
                            f"{base.get('num_hidden_layers')}")
    kept = cfg.get("kept_layers")
    if kept is not None and (len(kept) != len(layers) or sorted(set(kept)) != list(kept)
                             or not 0 <= kept[0] <= kept[-1] < int(cfg.get("source_num_hidden_layers", -1))):
        raise OfaserveError(f"{where}: kept_layers {kept} do not name {len(layers)} increasing layers of "
                            f"{cfg.get('source_num_hidden_layers')}")
    hd = int(base["hidden_size"]) // int(base["num_attention_heads"])
    for i, layer in enumerate(layers):
        if int(layer["head_dim"]) != hd:
            raise OfaserveError(f"{where}: layer {i} head_dim {layer['head_dim']} != hidden/heads = {hd}")
        if not 0 < int(layer["num_heads"]) <= int(base["num_attention_heads"]):
            raise OfaserveError(f"{where}: layer {i} num_heads {layer['num_heads']} out of range")
        if not 0 < int(layer["intermediate_size"]) <= int(base["intermediate_size"]):
            raise OfaserveError(f"{where}: layer {i} intermediate_size {layer['intermediate_size']} out of range")


# ----------------------------------------------------------------------------- model
def build_sub_model(cfg: dict[str, Any]):
    """A ``BertForSequenceClassification`` with the narrower layers of ``cfg`` (random weights)."""
    import paddle.nn as nn


    _check_config(cfg, "sub model config")
    base = cfg["base_config"]
    hidden = int(base["hidden_size"])
    model = build_classifier(base)
    for layer, spec in zip(model.bert.encoder.layers, cfg["layers"]):
        inner = int(spec["num_heads"]) * int(spec["head_dim"])
        attn = layer.self_attn
        attn.q_proj = nn.Linear(hidden, inner)
        attn.k_proj = nn.Linear(attn.kdim, inner)
        attn.v_proj = nn.Linear(attn.vdim, inner)
        attn.out_proj = nn.Linear(inner, hidden)
        attn.num_heads = int(spec["num_heads"])
        attn.head_dim = int(spec["head_dim"])
        attn.embed_dim = inner  # informational; forward reshapes with num_heads x head_dim
        ffn = int(spec["intermediate_size"])
        layer.linear1 = nn.Linear(hidden, ffn)
        layer.linear2 = nn.Linear(ffn, hidden)
    model.eval()
    return model


def check_shapes(model, state: dict[str, Any], cfg: dict[str, Any], where: str) -> None:
    """Every tensor present with exactly the config's shape; every head count consistent."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want) - set(state))
    extra = sorted(set(state) - set(want))
    if missing or extra:
        raise OfaserveError(f"{where}: weights do not match the sub model config "
                            f"(missing {missing[:3]}, unexpected {extra[:3]})")
    bad = [(k, tuple(np.shape(state[k])), s) for k, s in want.items() if tuple(np.shape(state[k])) != s]
    if bad:
        k, got, exp = bad[0]
        raise OfaserveError(f"{where}: {len(bad)} tensors have the wrong shape for model_config.json, "
                            f"e.g. {k} is {got}, config says {exp}")
    for i, (layer, spec) in enumerate(zip(model.bert.encoder.layers, cfg["layers"])):
        attn = layer.self_attn
        if attn.num_heads * attn.head_dim != attn.q_proj.weight.shape[1] or attn.num_heads != spec["num_heads"]:
            raise OfaserveError(f"{where}: layer {i} attention has {attn.num_heads} heads x {attn.head_dim} but "
                                f"q_proj gives {attn.q_proj.weight.shape[1]} features")


def save_sub_model(folder: str | os.PathLike, cfg: dict[str, Any], state: dict[str, np.ndarray]) -> None:
    import paddle

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = build_sub_model(cfg)
    check_shapes(model, state, cfg, str(folder))
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=1) + "\n")
    paddle.save({k: np.asarray(v, dtype=np.float32) for k, v in state.items()}, str(folder / WEIGHTS_FILE))


def load_sub_model(folder: str | os.PathLike):
    """Rebuild the exported sub model (eval mode) from ``folder``; no OFA patch involved."""
    import paddle

    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not cfg_path.is_file() or not w_path.is_file():
        raise OfaserveError(f"{folder} is not an exported sub model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise OfaserveError(f"{cfg_path} is not valid JSON: {e}") from e
    _check_config(cfg, str(cfg_path))
    try:
        state = paddle.load(str(w_path))
    except Exception as e:
        raise OfaserveError(f"cannot load {w_path}: {e} (corrupted?)") from e
    if not isinstance(state, dict):
        raise OfaserveError(f"{w_path} does not hold a state dict")
    model = build_sub_model(cfg)
    check_shapes(model, state, cfg, str(folder))
    model.set_state_dict(state)
    model.eval()
    return model


# ----------------------------------------------------------------------------- size
def count_params_config(cfg: dict[str, Any]) -> dict[str, int]:
    """Total and encoder parameter counts, analytically from a (sub) config."""
    base = cfg["base_config"]
    h, v = int(base["hidden_size"]), int(base["vocab_size"])
    emb = (v + int(base["max_position_embeddings"]) + int(base["type_vocab_size"])) * h + 2 * h
    enc = 0
    for spec in cfg["layers"]:
        a = int(spec["num_heads"]) * int(spec["head_dim"])
        f = int(spec["intermediate_size"])
        enc += 3 * (h * a + a) + (a * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h
    head = (h * h + h) + (h * int(base["num_labels"]) + int(base["num_labels"]))
    return {"total": emb + enc + head, "encoder": enc, "embeddings": emb}


def full_width_config(base_config: dict[str, Any]) -> dict[str, Any]:
    hd = int(base_config["hidden_size"]) // int(base_config["num_attention_heads"])
    layers = [{"num_heads": int(base_config["num_attention_heads"]), "head_dim": hd,
               "intermediate_size": int(base_config["intermediate_size"])}
              for _ in range(int(base_config["num_hidden_layers"]))]
    return {"format": FORMAT, "width_mult": 1.0, "base_config": dict(base_config), "layers": layers}


def flops(cfg: dict[str, Any], batch: int = 16, seq: int = 128) -> int:
    """Matmul FLOPs (2 x multiply-adds) of one forward at ``batch x seq``."""
    base = cfg["base_config"]
    h, c = int(base["hidden_size"]), int(base["num_labels"])
    t = batch * seq
    total = 0
    for spec in cfg["layers"]:
        a = int(spec["num_heads"]) * int(spec["head_dim"])
        f = int(spec["intermediate_size"])
        total += 2 * t * h * a * 3          # q, k, v
        total += 2 * batch * seq * seq * a * 2  # QK^T and weights x V
        total += 2 * t * a * h              # out_proj
        total += 2 * t * h * f * 2          # FFN
    total += 2 * batch * h * h + 2 * batch * h * c  # pooler + classifier
    return int(total)


def save_static(model, prefix: Path) -> None:
    """``model`` as a Paddle static model at ``prefix`` (model.json/.pdmodel + .pdiparams),
    with dynamic batch and sequence axes. ``to_static`` converts the layer it is given."""
    import paddle
    from paddle.static import InputSpec

    spec = [InputSpec([None, None], "int64", "input_ids"), InputSpec([None, None], "int64", "token_type_ids")]
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), str(prefix))
