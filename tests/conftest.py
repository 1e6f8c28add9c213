"""Shared fixtures: a tiny random-weight BERT run through the REAL compress (and export)
code, so every later stage is tested on genuine artifacts in seconds."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402

TINY_WIDTHS = [1.0, 0.75, 0.5]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(hf_checkpoint_dir, train_csv, dev_csv) for a 2-layer, 64-wide, 4-head BERT."""
    from ofaserve.testing import tiny_task_files, write_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    train, dev, texts = tiny_task_files(root / "data")
    ckpt = write_tiny_hf_checkpoint(root / "hf", texts)
    return ckpt, train, dev


@pytest.fixture(scope="session")
def tiny_compress_dir(tiny_checkpoint, tmp_path_factory):
    """Output of the real `compress_model` on the tiny checkpoint (widths 1.0/0.75/0.5)."""
    from ofaserve.compress.pipeline import CompressOptions, compress_model

    ckpt, train, dev = tiny_checkpoint
    out = tmp_path_factory.mktemp("compress") / "out"
    compress_model(CompressOptions(
        output_dir=str(out), model_name_or_path=str(ckpt), train_file=str(train), dev_file=str(dev),
        width_mult_list=TINY_WIDTHS, max_seq_length=32, batch_size=16, num_teacher_epochs=1,
        num_train_epochs=1, importance_samples=32, learning_rate=1e-3, teacher_learning_rate=1e-3,
        progress=False, logging_steps=0))
    return out


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_compress_dir, tmp_path_factory):
    """Output of the real `export_subnet` at width 0.75 on ``tiny_compress_dir``
    (manifest, sub_model/, static/, onnx/ incl. fused/fp16/int8 variants, tokenizer/)."""
    from ofaserve.export import export_subnet

    out = tmp_path_factory.mktemp("export") / "w075"
    export_subnet(str(tiny_compress_dir), str(out), 0.75, progress=False)
    return out
