"""--teacher_dir reuses an earlier run's fine-tuned teacher (checksum-checked) and
--select_width keeps the checkpoint that is best at the width that will be deployed."""
import logging
import shutil

import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import read_manifest
from ofaserve.compress.pipeline import compress_model
from tests.conftest import TINY_WIDTHS
from tests.test_compress_resume import _opts


def test_reused_teacher_and_width_selection(tmp_path, tiny_checkpoint, tiny_compress_dir, caplog):
    ckpt, train_csv, dev_csv = tiny_checkpoint
    with caplog.at_level(logging.INFO, logger="ofaserve.compress"):
        manifest = compress_model(_opts(tmp_path / "out", ckpt, train_csv, dev_csv, teacher_dir=str(tiny_compress_dir),
                                        select_width=TINY_WIDTHS[-1])).to_dict()
    assert "reusing the fine-tuned teacher" in caplog.text
    old = read_manifest(tiny_compress_dir, stage="compress")
    assert manifest["checkpoint_sha256"]["teacher"] == old["checkpoint_sha256"]["teacher"]
    assert manifest["phases"]["teacher"]["reused_from"]["sha256"] == old["checkpoint_sha256"]["teacher"]
    assert manifest["results"]["teacher"]["dev"] == old["results"]["teacher"]["dev"]
    # the kept checkpoint is the one with the best dev accuracy at the selected width
    history = manifest["phases"]["ofa"]["history"]
    key = list(manifest["results"]["widths"])[-1]
    best = max(history, key=lambda h: h["dev"][key]["accuracy"])
    assert manifest["phases"]["ofa"]["best_step"] == best["step"]
    assert all(h["score"] == h["dev"][key]["accuracy"] for h in history)


def test_reused_teacher_must_match_its_checksum(tmp_path, tiny_checkpoint, tiny_compress_dir):
    ckpt, train_csv, dev_csv = tiny_checkpoint
    broken = tmp_path / "broken"
    shutil.copytree(tiny_compress_dir, broken)
    with open(broken / "teacher" / "model_state.pdparams", "ab") as f:
        f.write(b"x")
    with pytest.raises(OfaserveError, match="checksum"):
        compress_model(_opts(tmp_path / "out", ckpt, train_csv, dev_csv, teacher_dir=str(broken)))
    assert not (tmp_path / "out").exists()


def test_select_width_must_be_a_trained_width(tmp_path, tiny_checkpoint):
    ckpt, train_csv, dev_csv = tiny_checkpoint
    with pytest.raises(OfaserveError, match="--select_width"):
        compress_model(_opts(tmp_path / "out", ckpt, train_csv, dev_csv, select_width=0.3))


def test_select_width_close_to_a_trained_width_is_that_width(tmp_path, tiny_checkpoint, tiny_compress_dir):
    """0.5004 is accepted as 0.5 (like 0.667 for 0.6666...) and must select on that width."""
    ckpt, train_csv, dev_csv = tiny_checkpoint
    manifest = compress_model(_opts(tmp_path / "out", ckpt, train_csv, dev_csv, teacher_dir=str(tiny_compress_dir),
                                    select_width=TINY_WIDTHS[-1] + 4e-4)).to_dict()
    key = list(manifest["results"]["widths"])[-1]
    assert all(h["score"] == h["dev"][key]["accuracy"] for h in manifest["phases"]["ofa"]["history"])


def test_reused_teacher_must_come_from_the_same_data(tmp_path, tiny_checkpoint, tiny_compress_dir):
    ckpt, train_csv, dev_csv = tiny_checkpoint
    other = tmp_path / "other_train.csv"
    other.write_bytes(train_csv.read_bytes())
    with pytest.raises(OfaserveError, match="train_file"):
        compress_model(_opts(tmp_path / "out", ckpt, other, dev_csv, teacher_dir=str(tiny_compress_dir)))
    assert not (tmp_path / "out").exists()


def test_lambda_ce_adds_the_gold_label_loss(tmp_path, tiny_checkpoint, tiny_compress_dir, caplog):
    """With every distillation weight at 0 the OFA loss is 0; --lambda_ce alone makes it the
    cross-entropy on the gold labels (positive), and so changes the trained supernet."""
    from ofaserve.core.files import sha256_file
    ckpt, train_csv, dev_csv = tiny_checkpoint
    shas, logged = [], []
    for i, ce in enumerate((0.0, 1.0)):
        caplog.clear()
        opts = _opts(tmp_path / f"o{i}", ckpt, train_csv, dev_csv, teacher_dir=str(tiny_compress_dir),
                     lambda_hidden=0.0, lambda_logit=0.0, lambda_ce=ce)
        opts.logging_steps = 1
        with caplog.at_level(logging.INFO, logger="ofaserve.compress"):
            compress_model(opts)
        logged.append([r.args[2] for r in caplog.records if r.msg.startswith("ofa step")])
        shas.append(sha256_file(tmp_path / f"o{i}" / "supernet" / "model_state.pdparams"))
    assert logged[0] and all(v == 0 for losses in logged[0] for v in losses.values())
    assert logged[1] and all(v > 0 for losses in logged[1] for v in losses.values())
    assert shas[0] != shas[1]
