"""`ofaserve demo` end to end on the tiny model (compress output reused): exports, the
repository, a real Triton server, gRPC classification, the benchmark, the summary, and
no server left behind."""
import json
import shutil

import psutil
import pytest


def _tritons() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name", "cmdline"])
            if "tritonserver" in " ".join(p.info["cmdline"] or [])}


@pytest.mark.integration
def test_demo_runs_end_to_end_and_reuses_stages(tmp_path, tiny_compress_dir, capsys):
    from ofaserve import demo

    work = tmp_path / "demo"
    shutil.copytree(tiny_compress_dir, work / "compress")
    before = _tritons()  # other servers (another test run) may come and go meanwhile
    argv = ["--workdir", str(work), "--width_mult", "0.75", "--requests", "3", "--seq_len", "32"]
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "=== Accuracy per width" in out and "=== Latency" in out
    summary = json.loads((work / "summary.json").read_text())
    assert set(summary["exports"]) == {"1.0", "0.75"}
    assert len(summary["classified"]) == len(demo.SENTENCES)
    assert all(abs(sum(c["probs"].values()) - 1) < 1e-5 for c in summary["classified"])
    report = json.loads((work / "bench" / "report.json").read_text())
    assert report["results"], "the benchmark measured something"
    assert not (_tritons() - before), "the demo must stop its server"

    # second run: every finished stage is reused
    assert demo.main(argv) == 0
    out = capsys.readouterr().out
    assert "compress: reusing" in out and "export 0.75: reusing" in out and "repo: reusing" in out
