"""Compress and export on the tasks beyond single-sentence classification: sentence pairs,
regression, and a GLUE task with two dev sets, through the real pipeline on tiny models."""
from __future__ import annotations

import dataclasses

import numpy as np

from ofaserve.core.manifests import read_manifest
from ofaserve.core.manifests import CompressManifest


def test_pair_classification_compress(tiny_pair_compress_dir):
    m = read_manifest(tiny_pair_compress_dir, "compress")
    assert m["task_spec"]["pair"] is True and m["labels"] == ["different", "same"]
    assert m["results"]["metric"] == "accuracy" and m["results"]["report_split"] == "dev"
    for w, r in m["results"]["widths"].items():
        assert {"accuracy", "f1", "n"} <= set(r["dev"]) and "ci95" in r["dev"]["vs_teacher"], w
    assert "| model | dev acc | dev F1 | dev acc - teacher (95% CI) |" in CompressManifest.from_dict(m).results_table()


def test_regression_compress_trains_a_one_output_head(tiny_regression_compress_dir):
    m = read_manifest(tiny_regression_compress_dir, "compress")
    assert m["task_spec"]["type"] == "regression" and m["labels"] == []
    assert m["model_config"]["num_labels"] == 1
    assert m["results"]["metric"] == "pearson" and m["results"]["majority_class"]["dev"] is None
    teacher = m["results"]["teacher"]["dev"]
    assert set(teacher) == {"pearson", "spearman", "n"} and -1 <= teacher["pearson"] <= 1
    vs = m["results"]["widths"]["0.5"]["dev"]["vs_teacher"]
    assert vs["metric"] == "pearson" and vs["ci95"][0] <= vs["diff"] <= vs["ci95"][1]
    assert "dev Pearson - teacher" in CompressManifest.from_dict(m).results_table()


def test_glue_task_with_two_dev_sets(tiny_checkpoint, tmp_path):
    """MNLI: GLUE's files, three classes, pairs, and dev_mismatched scored for every model."""
    from ofaserve.compress.pipeline import compress_model
    from ofaserve.testing import tiny_compress_options, write_glue_task

    ckpt, _, _ = tiny_checkpoint
    data_dir = write_glue_task(tmp_path / "mnli", "mnli", n_train=48, n_dev=24)
    opts = dataclasses.replace(tiny_compress_options(ckpt, None, None, tmp_path / "c"), train_file=None,
                               dev_file=None, task_name="MNLI", data_dir=str(data_dir))
    m = compress_model(opts)
    assert m.task == "mnli" and m.model_config["num_labels"] == 3 and m.spec.pair
    for r in [m.results["teacher"], *m.results["widths"].values()]:
        assert r["dev_mismatched"]["n"] == 24 and 0 <= r["dev_mismatched"]["accuracy"] <= 1
    assert "dev_mismatched acc" in m.results_table()
    assert m.options["data_dir"] == str(data_dir)


def test_regression_export_checks_scores(tiny_regression_export_dir, tiny_regression_compress_dir):
    """The exported one-output graph gives the supernet's scores, its dev Pearson equals
    compress's, and its precision variants are gated on Pearson and score difference."""
    m = read_manifest(tiny_regression_export_dir, "export")
    assert m["task_spec"]["type"] == "regression" and m["num_labels"] == 1
    assert m["parity"]["ok"] and m["parity"]["dev_score"]["metric"] == "pearson"
    assert m["parity"]["dev_score"]["abs_diff"] <= m["parity"]["dev_score"]["tolerance"]
    for name, rec in m["precisions"].items():
        if "gate_passed" in rec or "shipped" in rec:
            assert "max_abs_score_diff_vs_fp32" in rec and "agreement_with_fp32" not in rec, name


def test_pair_export_parity_uses_segment_ids(tiny_pair_export_dir, tiny_pair_compress_dir):
    """Parity inputs of a pair task carry both sentences (segment ids 0 and 1)."""
    from ofaserve.export import parity, source

    src = source.load_compress_output(tiny_pair_compress_dir)
    tok, _ = source.load_tokenizer(src, 128)
    inputs = parity.parity_inputs(source.load_dev(src), tok, 0, 128)
    ids, types = inputs["16x128"]
    assert (types == 1).any() and set(np.unique(types).tolist()) == {0, 1}
    m = read_manifest(tiny_pair_export_dir, "export")
    assert m["parity"]["ok"] and m["task_spec"]["pair"]
