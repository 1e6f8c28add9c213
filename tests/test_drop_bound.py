"""`--width_mult auto --max_metric_drop` holds the upper end of each subnet's dev drop interval
(paired bootstrap against the teacher, recorded by compress from the kept checkpoint's dev
outputs) to the tolerance, or with `--drop_bound point` the drop itself."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.subnet import Subnet, results_by_subnet
from ofaserve.core.vocabulary import DropBound


def _one_hot(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Logits that answer ``labels`` where ``correct`` and the other class elsewhere."""
    answer = np.where(correct, labels, 1 - labels)
    return np.eye(2, dtype=np.float32)[answer]


def test_final_evaluation_draws_dev_intervals_from_the_kept_checkpoint_s_outputs(monkeypatch):
    """The dev interval of a subnet comes from the outputs that scored the kept checkpoint;
    after a resume (no outputs kept) from a fresh pass of the same weights."""
    from ofaserve.compress import pipeline
    from ofaserve.core.tasks import Split, TaskData, TaskSpec

    labels = np.array([0, 1] * 10)
    dev, test = Split([f"d{i}" for i in range(20)], labels), Split([f"t{i}" for i in range(20)], labels)
    spec = TaskSpec("toy", labels=("a", "b"))
    run = pipeline._Run(opts=None, widths=[1.0, 0.5], depths=[1.0], select_key=None, main=True, out=Path("."),
                        partial=Path("."), model_dir=Path("."), data=TaskData(spec, {"dev": dev, "test": test}),
                        tokenizer=None, train=dev, dev=dev, test=test)
    run.scorer = SimpleNamespace(teacher=lambda model, version: "teacher",
                                 width=lambda sn, width, step, depth: f"w{width}@{step}")
    right = np.ones(20, bool)
    fresh = {("teacher", "d"): right, ("teacher", "t"): right,
             ("w1.0@7", "d"): ~right,  # not what scored the checkpoint: must not be used
             ("w0.5@7", "d"): np.arange(20) >= 4, ("w1.0@7", "t"): right, ("w0.5@7", "t"): right}
    monkeypatch.setattr(pipeline, "predict", lambda fn, split, tok: _one_hot(fresh[(fn, split.texts[0][0])], labels))
    kept = {"1.0": _one_hot(np.arange(20) >= 2, labels)}  # 18 of 20 right
    keeper = SimpleNamespace(best={"step": 7, "dev": {"1.0": {"accuracy": 0.9}, "0.5": {"accuracy": 0.8}}},
                             best_dev_outputs=kept)
    res = pipeline._final_evaluation(run, None, None, keeper)
    assert res["teacher"]["dev"]["accuracy"] == 1.0 and res["report_split"] == "test"
    assert res["widths"]["1.0"]["dev"]["vs_teacher"]["diff"] == pytest.approx(-0.1)
    assert res["widths"]["0.5"]["dev"]["vs_teacher"]["diff"] == pytest.approx(-0.2)  # the fresh pass
    low, high = res["widths"]["1.0"]["dev"]["vs_teacher"]["ci95"]
    assert -0.3 <= low < -0.1 < high <= 0.0  # two misses in 20: an interval, not a point
    assert res["widths"]["1.0"]["test"]["vs_teacher"]["diff"] == 0.0
    assert keeper.best["dev"]["1.0"] == {"accuracy": 0.9}  # the history entry is not changed


def _with_dev(compress_dir: Path, out: Path, teacher: float,
              dev: dict[str, tuple[float, float | None, float | None]]) -> Path:
    """A copy of a compress output whose dev scores are (score, drop interval low, high), or
    (with None) a score without an interval, as an earlier compress wrote."""
    shutil.copytree(compress_dir, out)
    m = json.loads((out / "manifest.json").read_text())
    m["results"]["teacher"]["dev"]["accuracy"] = teacher
    for sub, r in results_by_subnet(m["results"]):
        score, low, high = dev[sub.key]
        r["dev"]["accuracy"] = score
        if low is None:
            r["dev"].pop("vs_teacher", None)
        else:  # stored as subnet - teacher
            r["dev"]["vs_teacher"] = {"metric": "accuracy", "diff": score - teacher, "ci95": [-high, -low]}
    (out / "manifest.json").write_text(json.dumps(m))
    return out


GRID = {"1.0": (0.81, -0.03, 0.01), "0.5": (0.795, -0.02, 0.03), "1.0_d0.5": (0.80, -0.012, 0.008),
        "0.5_d0.5": (0.798, -0.02, 0.025)}


def test_the_upper_end_of_the_drop_interval_is_held_to_the_tolerance(tiny_depth_compress_dir, tmp_path):
    from ofaserve.export.selection import select_by_metric_drop, selection_table
    from ofaserve.export.source import load_compress_output

    src = load_compress_output(_with_dev(tiny_depth_compress_dir, tmp_path / "c", 0.80, GRID))
    # by the drop alone the cheapest subnet passes (0.002 <= 0.01); its interval reaches 0.025
    assert select_by_metric_drop(src, 0.01, DropBound.POINT)[0] == Subnet.of(0.5, 0.5)
    sub, sel = select_by_metric_drop(src, 0.01)
    assert sub == Subnet.of(1.0, 0.5) and sel["drop_bound"] == "ci95_upper"
    rows = {r["subnet"]: r for r in sel["table"]}
    assert rows["0.5_d0.5"]["drop_ci95"] == [-0.02, 0.025] and not rows["0.5_d0.5"]["within"]
    assert rows["1.0_d0.5"]["within"] and rows["1.0"]["within"] and not rows["0.5"]["within"]
    table = selection_table(sel)
    assert "upper end <= 0.01" in table and "| 0.5 | 0.5 | 0.7980 | +0.0020 | [-0.0200, +0.0250] | no |" in table
    assert select_by_metric_drop(src, 0.03)[0] == Subnet.of(0.5, 0.5)
    with pytest.raises(OfaserveError, match="upper end of whose dev drop's 95% interval is within 0.005") as e:
        select_by_metric_drop(src, 0.005)
    assert "1.0_d0.5: 0.8000 (drop +0.0000, 95% CI [-0.0120, +0.0080])" in str(e.value)
    assert str(e.value).endswith("allow a larger --max_metric_drop, or hold the drop itself (--drop_bound point)")


def test_a_manifest_without_dev_intervals_asks_for_compress_or_the_point_rule(tiny_depth_compress_dir, tmp_path):
    from ofaserve.export.selection import select_by_metric_drop
    from ofaserve.export.source import load_compress_output

    old = {k: (v[0], None, None) for k, v in GRID.items()}
    src = load_compress_output(_with_dev(tiny_depth_compress_dir, tmp_path / "c", 0.80, old))
    with pytest.raises(OfaserveError, match=r"re-run `ofaserve compress`, or .* --drop_bound point"):
        select_by_metric_drop(src, 0.01)
    assert select_by_metric_drop(src, 0.01, DropBound.POINT)[0] == Subnet.of(0.5, 0.5)


def test_export_cli_passes_the_drop_bound_and_refuses_an_unknown_one(tiny_depth_compress_dir, tmp_path, capsys):
    from ofaserve.core.manifests import read_manifest
    from ofaserve.export.cli import main

    # the real scores: the export checks its subnet's dev score against the manifest's
    base = ["--model_name_or_path", str(tiny_depth_compress_dir), "--width_mult", "auto", "--max_metric_drop", "1",
            "--no_progress", "--no_precisions", "--parity_runtimes", "onnx"]
    with pytest.raises(SystemExit) as e:
        main([*base, "--output_dir", str(tmp_path / "x"), "--drop_bound", "median"])
    assert e.value.code == 2 and "unknown drop bound 'median'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert main([*base, "--output_dir", str(tmp_path / "p"), "--drop_bound", "point"]) == 0
    m = read_manifest(tmp_path / "p", stage="export")
    assert (m["width_mult"], m["depth_mult"]) == (0.5, 0.5) and m["selection"]["drop_bound"] == "point"
