"""Ctrl-C during compress keeps the previous good output intact; --resume continues
from the last checkpoint and finishes the job."""
import logging
import shutil

import pytest

from ofaserve.compress import train
from ofaserve.core.manifests import read_manifest
from ofaserve.compress.pipeline import CompressOptions, compress_model
from tests.conftest import TINY_WIDTHS


def _opts(out, ckpt, train_csv, dev_csv, **kw):
    return CompressOptions(output_dir=str(out), model_name_or_path=str(ckpt), train_file=str(train_csv),
                           dev_file=str(dev_csv), width_mult_list=TINY_WIDTHS, max_seq_length=32, batch_size=16,
                           num_teacher_epochs=1, num_train_epochs=1, importance_samples=32, learning_rate=1e-3,
                           teacher_learning_rate=1e-3, progress=False, logging_steps=0, save_steps=2, **kw)


def test_interrupt_then_resume(tmp_path, tiny_checkpoint, tiny_compress_dir, monkeypatch, caplog):
    ckpt, train_csv, dev_csv = tiny_checkpoint
    out = tmp_path / "out"
    shutil.copytree(tiny_compress_dir, out)  # a previous good output
    before = (out / "manifest.json").read_text()

    calls = {"n": 0}
    real = train.soft_cross_entropy

    def interrupting(*a, **k):  # Ctrl-C during the 4th OFA step (after the save at step 2)
        calls["n"] += 1
        if calls["n"] == 3 * len(TINY_WIDTHS) + 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "soft_cross_entropy", interrupting)
    with pytest.raises(KeyboardInterrupt):
        compress_model(_opts(out, ckpt, train_csv, dev_csv))
    assert (out / "manifest.json").read_text() == before, "previous output must be untouched"
    partial = tmp_path / "out.partial"
    assert (partial / "ofa" / "last.pdparams").is_file()

    monkeypatch.setattr(train, "soft_cross_entropy", real)
    with caplog.at_level(logging.INFO, logger="ofaserve.compress"):
        manifest = compress_model(_opts(out, ckpt, train_csv, dev_csv, resume=True)).to_dict()
    assert "resumed the fine-tuned teacher" in caplog.text
    assert "resumed OFA training at step 2" in caplog.text
    assert read_manifest(out, stage="compress")["created"] == manifest["created"] != before
    steps = [h["step"] for h in manifest["phases"]["ofa"]["history"]]
    assert steps == [2, 4, 6]
    assert not partial.exists()
