"""`ofaserve bench --headline` and the width x depth record, on tiny exports served by REAL
Triton servers: the tutorial's setting (full model, fp32, 16 x 128) against ofaserve's default
(auto-chosen subnet, auto precision, packing), each with its served accuracy."""
from __future__ import annotations

import json

import pytest

from tests.conftest import TINY_MAX_SEQ_LENGTH

pytestmark = pytest.mark.integration

REQUESTS = 20  # the bench's floor for a ratio with an interval


@pytest.fixture(scope="module")
def headline_repositories(tiny_depth_compress_dir, tmp_path_factory):
    """(tutorial repository: the width 1.0 export at fp32, default repository: the
    `--width_mult auto` export at `--precision auto`)."""
    from ofaserve.export import export_subnet
    from ofaserve.serve.repository import build_repository

    root = tmp_path_factory.mktemp("headline")
    full, auto = root / "export_full", root / "export_auto"
    export_subnet(str(tiny_depth_compress_dir), str(full), 1.0, max_seq_length=TINY_MAX_SEQ_LENGTH, progress=False,
                  int8=False)
    export_subnet(str(tiny_depth_compress_dir), str(auto), "auto", max_metric_drop=1.0,
                  max_seq_length=TINY_MAX_SEQ_LENGTH, progress=False, int8=False)
    build_repository([full], root / "tutorial", precision="fp32")
    build_repository([auto], root / "default", precision="auto", auto_budget_s=0.3)
    return root / "tutorial", root / "default"


def _headline(tutorial, default, out, *extra):
    from ofaserve.serve.server import free_port

    return ["--headline", "--start_server", "--tutorial_repository", str(tutorial), "--model_repository",
            str(default), "--requests", str(REQUESTS), "--rounds", "2", "--warmup", "1", "--grpc_port",
            str(free_port()), "--http_port", str(free_port()), "--metrics_port", str(free_port()),
            "--output_dir", str(out), "--no_progress", *extra]


def test_headline_serves_both_settings_side_by_side(headline_repositories, tmp_path, capsys):
    from ofaserve.benchmarks.run import main
    from ofaserve.core.tasks import load_task

    tutorial, default = headline_repositories
    out = tmp_path / "headline"
    assert main(_headline(tutorial, default, out)) == 0, capsys.readouterr().err
    record = json.loads((out / "headline.json").read_text())
    sp = record["speedup"]
    assert sp["speedup_x"] > 0 and len(sp["ci95"]) == 2 and sp["ci95"][0] <= sp["speedup_x"] <= sp["ci95"][1]
    assert sp["default_n"] == sp["tutorial_n"] == REQUESTS
    assert sp["speedup_x"] == pytest.approx(sp["tutorial_ms"] / sp["default_ms"])
    sides = record["sides"]
    assert (sides["tutorial"]["subnet"], sides["tutorial"]["precision"]) == ("1.0", "fp32")
    assert sides["default"]["subnet"] == "0.5_d0.5" and sides["default"]["selection"]["chosen"] == "0.5_d0.5"
    from ofaserve.runtime import capabilities
    # exports without INT8: precision auto picks among what this CPU executes (bf16 only where
    # OpenVINO reports BF16; the branches under simulated capabilities are test_cpu_capabilities')
    assert sides["default"]["precision"] in (("fp32", "bf16") if capabilities.detect().bf16 else ("fp32",))
    data = load_task("rt-polarity")
    acc = record["accuracy"]
    for side in ("tutorial", "default"):
        for split in ("dev", "test"):
            assert acc[side][split]["n"] == len(data.split(split))  # every sentence, served
            assert 0.0 <= acc[side][split]["accuracy"] <= 1.0
    diff = acc["default_minus_tutorial"]["test"]
    assert diff["diff"] == pytest.approx(acc["default"]["test"]["accuracy"] - acc["tutorial"]["test"]["accuracy"])
    assert isinstance(record["machine"]["cpu_flags"], list)
    for side in ("tutorial", "default"):
        lat = record["latency"][side]
        assert lat["accounting"]["sent"] == lat["accounting"]["ok"] == REQUESTS == len(lat["latencies_ms"])
    md = (out / "headline.md").read_text()
    assert f"ofaserve's default is {sp['speedup_x']:.2f}x faster than the tutorial's setting (95% CI" in md


def test_headline_on_a_sentence_pair_regression_task_from_its_compress_output(tiny_regression_compress_dir,
                                                                            tmp_path, capsys):
    """A GLUE-style task given by --compress_dir (pairs, a score): both sides answer the pairs
    and are scored by the task's own metric."""
    from ofaserve.benchmarks.run import main
    from ofaserve.core.manifests import CompressManifest
    from ofaserve.export import export_subnet
    from ofaserve.serve.repository import build_repository

    full, auto = tmp_path / "export_full", tmp_path / "export_auto"
    export_subnet(str(tiny_regression_compress_dir), str(full), 1.0, max_seq_length=TINY_MAX_SEQ_LENGTH,
                  progress=False, int8=False)
    export_subnet(str(tiny_regression_compress_dir), str(auto), "auto", max_metric_drop=2.0,
                  max_seq_length=TINY_MAX_SEQ_LENGTH, progress=False, int8=False)
    build_repository([full], tmp_path / "tutorial", precision="fp32")
    build_repository([auto], tmp_path / "default", precision="auto", auto_budget_s=0.3)
    out = tmp_path / "headline"
    argv = _headline(tmp_path / "tutorial", tmp_path / "default", out, "--compress_dir",
                     str(tiny_regression_compress_dir))
    assert main(argv) == 0, capsys.readouterr().err
    record = json.loads((out / "headline.json").read_text())
    dev = CompressManifest.read(tiny_regression_compress_dir).split("dev")
    assert dev.text_pairs is not None
    acc = record["accuracy"]
    assert acc["metric"] == "pearson" and set(acc["tutorial"]) == {"dev"}  # the task has no test split
    for side in ("tutorial", "default"):
        assert acc[side]["dev"]["n"] == len(dev) and -1.0 <= acc[side]["dev"]["pearson"] <= 1.0
    assert "dev sentence pairs as text" in record["sides"]["default"]["workload"]
    assert record["speedup"]["default_n"] == REQUESTS and record["speedup"]["speedup_x"] > 0


def test_headline_refuses_a_tutorial_side_that_is_not_the_full_fp32_model(headline_repositories, tmp_path,
                                                                         capsys):
    from ofaserve.benchmarks.run import main

    tutorial, default = headline_repositories
    assert main(_headline(default, default, tmp_path / "h")) == 2
    err = capsys.readouterr().err
    assert "error: --tutorial_repository: bert_w50_d50 is width 0.5, depth 0.5" in err
    assert main(_headline(tutorial, tutorial, tmp_path / "h")) == 2  # the default side must be ofaserve's choice
    assert "ofaserve's default is --precision auto" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_width_depth_record_joins_accuracy_and_one_bench_run(tiny_depth_compress_dir, tmp_path):
    from benchmarks.records.width_depth import main

    out = tmp_path / "width_depth.json"
    assert main(["--compress_dir", str(tiny_depth_compress_dir), "--work_dir", str(tmp_path / "work"),
                 "--output", str(out), "--subnets", "0.5_d0.5", "--requests", "4", "--rounds", "2"]) == 0
    record = json.loads(out.read_text())
    manifest = json.loads((tiny_depth_compress_dir / "manifest.json").read_text())
    split, metric = record["report_split"], record["metric"]
    configs = {c["subnet"]: c for c in record["configs"]}
    assert set(configs) == {"1.0", "0.5_d0.5"}  # the full model is always measured
    small, full = configs["0.5_d0.5"], configs["1.0"]
    assert (small["width_mult"], small["depth_mult"], small["layers"]) == (0.5, 0.5, [0, 2])
    entry = manifest["results"]["depths"]["0.5"]["0.5"][split]
    assert small[f"{split}_{metric}"] == entry[metric]
    assert small[f"{split}_{metric}_minus_teacher"]["ci95"] == entry["vs_teacher"]["ci95"]
    assert small[f"teacher_{split}_{metric}"] == manifest["results"]["teacher"][split][metric]
    assert full["speedup_vs_full_fp32"] is None and small["speedup_vs_full_fp32"]["faster_than_full_x"] > 0
    bench = json.loads((tmp_path / "work" / "bench" / "report.json").read_text())
    p50 = {r["model"]: r["latency_ms"]["p50"] for r in bench["results"]}
    assert small["served_16x128_fp32_p50_ms"] == p50["bert_w50_d50"]  # the bench's default shape
    assert {m["precision"] for m in bench["models"].values()} == {"fp32"}
    assert out.with_suffix(".md").read_text().count("\n| ") == 3  # header and two configs
