"""The export's inputs: a verified compress output, its supernet, dev sentences, tokenizer."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ofaserve.core import tokenizer
from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import sha256_file
from ofaserve.core.manifests import CompressManifest
from ofaserve.core.tasks import Split, TaskSpec
from ofaserve.compress.bert import build_classifier, load_state_dict


@dataclass
class Source:
    folder: Path
    manifest: CompressManifest
    config: dict
    state: dict
    ckpt: Path
    sha256: str
    spec: TaskSpec


def load_compress_output(folder: str | os.PathLike, model_type: str = "bert") -> Source:
    """Read and verify a compress output: stage, model type, checkpoint integrity, shapes."""

    folder = Path(folder)
    manifest = CompressManifest.read(folder)  # checks the stage and the fields export needs
    if model_type != "bert":
        raise OfaserveError(f"--model_type {model_type!r} is not supported (only bert)")
    if manifest.model_type != model_type:
        raise OfaserveError(f"{folder} holds a {manifest.model_type!r} model, not {model_type!r}")
    ckpt = manifest.checkpoint(folder, "supernet")
    if not ckpt.is_file():
        raise OfaserveError(f"the supernet checkpoint {ckpt} is missing: re-run `ofaserve compress`")
    digest = sha256_file(ckpt)
    want = manifest.checkpoint_sha256.get("supernet")
    if want and want != digest:
        raise OfaserveError(f"{ckpt} does not match the sha256 recorded by compress (corrupted or replaced): "
                            f"re-run `ofaserve compress`")
    state = load_state_dict(ckpt, "the supernet checkpoint")
    config = dict(manifest.model_config)
    model = build_classifier(config)
    want_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(want_shapes) - set(state))
    bad = [k for k in want_shapes if k in state and tuple(np.shape(state[k])) != want_shapes[k]]
    if missing or bad:
        raise OfaserveError(f"{ckpt} does not fit the manifest's model_config "
                            f"(missing {missing[:3]}, wrong shapes {bad[:3]})")
    return Source(folder, manifest, config, {k: np.asarray(state[k]) for k in want_shapes}, ckpt, digest,
                  manifest.spec)


def build_supernet(src: Source):
    from ofaserve.compress.ofa import OfaSupernet

    model = build_classifier(src.config)
    model.set_state_dict(src.state)
    model.eval()
    sn = OfaSupernet(model, src.manifest.width_mult_list, src.manifest.depth_mult_list)
    sn.eval()
    return sn


def load_dev(src: Source) -> Split:
    return src.manifest.split("dev")


def load_test(src: Source) -> Split | None:
    """The task's test split, or None when it has none (a user's CSV task without one)."""
    return src.manifest.split("test") if src.manifest.has_split("test") else None


def load_tokenizer(src: Source, max_seq_length: int):
    path = src.manifest.tokenizer_json(src.folder)
    return tokenizer.load_tokenizer(path, max_seq_length), path
