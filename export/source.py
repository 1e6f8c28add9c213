"""The export's inputs: a verified compress output, its supernet, dev sentences, tokenizer."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ofaserve.core import tokenizer
from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import read_manifest
from ofaserve.core.files import sha256_file
from ofaserve.core.subnet import manifest_depths
from ofaserve.core.tasks import Split, TaskSpec, spec_of, split_of


@dataclass
class Source:
    folder: Path
    manifest: dict
    config: dict
    state: dict
    ckpt: Path
    sha256: str
    spec: TaskSpec


def load_compress_output(folder: str | os.PathLike, model_type: str = "bert") -> Source:
    """Read and verify a compress output: stage, model type, checkpoint integrity, shapes."""
    import paddle

    from ofaserve.compress.bert import build_classifier

    folder = Path(folder)
    manifest = read_manifest(folder, stage="compress")
    if model_type != "bert":
        raise OfaserveError(f"--model_type {model_type!r} is not supported (only bert)")
    if manifest.get("model_type", "bert") != model_type:
        raise OfaserveError(f"{folder} holds a {manifest.get('model_type')!r} model, not {model_type!r}")
    for key in ("model_config", "checkpoints", "width_mult_list", "labels"):
        if key not in manifest:
            raise OfaserveError(f"{folder}/manifest.json lacks {key!r}: re-run `ofaserve compress`")
    rel = manifest["checkpoints"].get("supernet")
    ckpt = folder / (rel or "supernet/model_state.pdparams")
    if not ckpt.is_file():
        raise OfaserveError(f"the supernet checkpoint {ckpt} is missing: re-run `ofaserve compress`")
    digest = sha256_file(ckpt)
    want = (manifest.get("checkpoint_sha256") or {}).get("supernet")
    if want and want != digest:
        raise OfaserveError(f"{ckpt} does not match the sha256 recorded by compress (corrupted or replaced): "
                            f"re-run `ofaserve compress`")
    try:
        state = paddle.load(str(ckpt))
    except Exception as e:
        raise OfaserveError(f"cannot load the supernet checkpoint {ckpt}: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or not state:
        raise OfaserveError(f"{ckpt} does not hold a model state dict")
    config = dict(manifest["model_config"])
    model = build_classifier(config)
    want_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want_shapes) - set(state))
    bad = [k for k in want_shapes if k in state and tuple(np.shape(state[k])) != want_shapes[k]]
    if missing or bad:
        raise OfaserveError(f"{ckpt} does not fit the manifest's model_config "
                            f"(missing {missing[:3]}, wrong shapes {bad[:3]})")
    return Source(folder, manifest, config, {k: np.asarray(state[k]) for k in want_shapes}, ckpt, digest,
                  spec_of(manifest))


def build_supernet(src: Source):
    from ofaserve.compress.bert import build_classifier
    from ofaserve.compress.ofa import OfaSupernet

    model = build_classifier(src.config)
    model.set_state_dict(src.state)
    model.eval()
    sn = OfaSupernet(model, src.manifest["width_mult_list"], manifest_depths(src.manifest))
    sn.eval()
    return sn


def load_dev(src: Source) -> Split:
    return split_of(src.manifest)


def load_test(src: Source) -> Split | None:
    """The task's test split, or None when it has none (a user's CSV task without one)."""
    try:
        return split_of(src.manifest, "test")
    except OfaserveError:
        return None


def load_tokenizer(src: Source, max_seq_length: int):
    tok_rel = (src.manifest.get("tokenizer") or {}).get("tokenizer_json", "tokenizer/tokenizer.json")
    path = src.folder / tok_rel
    return tokenizer.load_tokenizer(path, max_seq_length), path
