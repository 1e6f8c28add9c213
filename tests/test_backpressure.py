"""Backpressure on the REAL Triton 2.51 server: the queue policy `ofaserve repo` writes
(tokenizer, encoder and fused model: max_queue_size, REJECT, two instances; postprocess none)
and what it does under overload, in the shape of Triton's qa/L0_model_queue on the tiny
export: open-loop traffic at 3x the measured capacity gets fast "Exceeds maximum queue size"
refusals and a bounded latency for what is accepted, and the same traffic on the same
repository without the policy (the control, what ofaserve repo wrote before) does not.
Every bound is derived in the run from the settings and a measured single-request time
(benchmarks/reliability/overload.py)."""
from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from ofaserve.benchmarks.reliability import overload, traffic
from ofaserve.benchmarks.reliability.faults import free_ports
from ofaserve.core.errors import OfaserveError
from ofaserve.serve.repository import QUEUED_MODEL_INSTANCES, build_repository
from ofaserve.serve.server import TritonServer

# Requests of one full batch each: the queue's length in executions is its length in requests.
ROWS = 64
QUEUE = 4


def _config(repo, name) -> mc.ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), mc.ModelConfig())


@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_every_text_path_model_has_a_bounded_queue_and_two_instances(tiny_export_dir, tmp_path, pipeline):
    m = build_repository([tiny_export_dir], tmp_path / "r", precision="fp32", text_pipeline=pipeline).to_dict()
    (model,) = m["models"]
    queued = [f"{model}_encoder"] + ([model] if pipeline == "fused" else [f"{model}_tokenizer"])
    for name in queued:
        cfg = _config(tmp_path / "r", name)
        policy = cfg.dynamic_batching.default_queue_policy
        assert cfg.dynamic_batching.HasField("default_queue_policy"), name
        assert policy.max_queue_size == m["max_batch_size"] == 64, name  # the default: one full batch
        assert policy.timeout_action == mc.ModelQueuePolicy.REJECT and policy.default_timeout_microseconds == 0
        assert cfg.instance_group[0].count == QUEUED_MODEL_INSTANCES >= 2, name
    if pipeline == "ensemble":  # fed at the encoder's rate: no policy, so no second instance either
        post = _config(tmp_path / "r", f"{model}_postprocess")
        assert not post.dynamic_batching.HasField("default_queue_policy") and post.instance_group[0].count == 1
    assert m["queue_policy"] == {"max_queue_size": 64, "queue_timeout_ms": 0.0, "timeout_action": "REJECT",
                                 "queued_model_instances": QUEUED_MODEL_INSTANCES}
    assert m["encoder_instances"] == QUEUED_MODEL_INSTANCES


def test_queue_settings_reach_the_configs(tiny_export_dir, tmp_path):
    m = build_repository([tiny_export_dir], tmp_path / "r", precision="fp32", max_queue_size=5, queue_timeout_ms=250,
                         instances=3).to_dict()
    (model,) = m["models"]
    for name in (f"{model}_tokenizer", f"{model}_encoder"):
        cfg = _config(tmp_path / "r", name)
        p = cfg.dynamic_batching.default_queue_policy
        assert (p.max_queue_size, p.default_timeout_microseconds) == (5, 250_000), name
    assert _config(tmp_path / "r", f"{model}_encoder").instance_group[0].count == 3
    assert m["queue_policy"]["max_queue_size"] == 5 and m["queue_policy"]["queue_timeout_ms"] == 250


def test_no_queue_limit_is_the_unbounded_queue_with_one_instance(tiny_export_dir, tmp_path):
    m = build_repository([tiny_export_dir], tmp_path / "r", precision="fp32", max_queue_size=0).to_dict()
    (model,) = m["models"]
    for name in (f"{model}_tokenizer", f"{model}_encoder"):
        cfg = _config(tmp_path / "r", name)
        assert not cfg.dynamic_batching.HasField("default_queue_policy") and cfg.instance_group[0].count == 1
    assert m["queue_policy"]["timeout_action"] is None


def test_xeon_native_encoder_has_no_batcher_so_no_queue(tiny_export_dir, tmp_path):
    m = build_repository([tiny_export_dir], tmp_path / "r", target="xeon", runtime="openvino-native").to_dict()
    (model,) = m["models"]
    enc = _config(tmp_path / "r", f"{model}_encoder")
    assert not enc.HasField("dynamic_batching") and enc.instance_group[0].count == 1
    assert _config(tmp_path / "r", f"{model}_tokenizer").dynamic_batching.default_queue_policy.max_queue_size == 64


@pytest.mark.parametrize("kwargs,message", [
    ({"instances": 1}, "needs at least 2 instances"),
    ({"max_queue_size": -1}, "max_queue_size must be >= 0"),
    ({"queue_timeout_ms": -5}, "queue_timeout_ms must be >= 0"),
])
def test_bad_queue_settings_are_one_line_errors(tiny_export_dir, tmp_path, kwargs, message):
    with pytest.raises(OfaserveError, match=message):
        build_repository([tiny_export_dir], tmp_path / "r", precision="fp32", **kwargs)
    assert not (tmp_path / "r").exists()


def test_repo_cli_refuses_a_lone_queued_instance(tiny_export_dir, tmp_path, capsys):
    from ofaserve.serve.cli import repo_main
    assert repo_main(["--export_dir", str(tiny_export_dir), "--output", str(tmp_path / "r"), "--precision", "fp32",
                      "--instances", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: a model with a queue limit needs at least 2 instances")
    assert repo_main(["--export_dir", str(tiny_export_dir), "--output", str(tmp_path / "r"), "--precision", "fp32",
                      "--instances", "1", "--max_queue_size", "0"]) == 0


# ------------------------------------------------------------------------------ overload (L0_model_queue)
def _overload(repo, model, manifest, texts, rate_per_s=None):
    ports = free_ports()
    queue = manifest["queue_policy"]
    with TritonServer(repo, grpc_port=ports["grpc"], http_port=ports["http"], metrics_port=ports["metrics"]) as srv:
        r = overload.overload_run(srv.grpc_url, model, texts, batch_size=ROWS, max_batch_size=manifest["max_batch_size"],
                                  max_queue_size=queue["max_queue_size"], instances=manifest["encoder_instances"],
                                  queue_timeout_ms=queue["queue_timeout_ms"], factor=3.0, duration_s=4.0,
                                  rate_per_s=rate_per_s)
        assert all(srv.models_ready().values())  # overload refused or queued, nothing went down
    assert "error" not in r, r
    return r


@pytest.mark.integration
@pytest.mark.parametrize("pipeline", ["ensemble", "fused"])
def test_overload_is_refused_fast_and_accepted_latency_stays_bounded(tiny_export_dir, tmp_path, pipeline):
    texts = traffic.dev_sentences(1024)
    # the control first: Triton's unbounded queue (what ofaserve repo wrote before), open loop at
    # 3x its capacity
    c = build_repository([tiny_export_dir], tmp_path / "c", precision="fp32", text_pipeline=pipeline,
                         max_batch_size=ROWS, max_queue_size=0).to_dict()
    (model,) = c["models"]
    control = _overload(tmp_path / "c", model, c, texts)
    # (its client may fall behind the schedule while the server's backlog takes the CPU; it still
    # offers more than the server answers)
    assert control["open_loop"]["counts"]["queue_full"] == 0, control["open_loop"]["counts"]
    assert control["open_loop"]["offered_per_s"] > control["capacity"]["per_s"], (control["open_loop"], control["capacity"])

    m = build_repository([tiny_export_dir], tmp_path / "r", precision="fp32", text_pipeline=pipeline,
                         max_batch_size=ROWS, max_queue_size=QUEUE).to_dict()
    # at 3x its own capacity: its two encoder instances answer more than the control's one, so the
    # control's rate can fall short of the 2x its "overloaded" check asks for
    r = _overload(tmp_path / "r", model, m, texts)
    counts, acc, ref = r["open_loop"]["counts"], r["accepted_latency_ms"], r["refused_latency_ms"]
    assert r["checks"]["overloaded"] and r["checks"]["client_kept_up"], (r["open_loop"], r["capacity"])
    assert counts["unanswered"] == 0 and counts["error"] == 0, r["open_loop"]["error_examples"]
    assert counts["queue_full"] > 0 and counts["ok"] > 0, counts  # refused with Triton's own message
    # refusals come before the typical acceptance, and within the queue's own bound
    assert ref["p50"] <= min(acc["p50"], r["accepted_bound_ms"]), (ref, acc, r["accepted_bound_ms"])
    # accepted: the queue and the batches outside it at the measured capacity, plus one request
    # alone (x BOUND_SLACK), plus Triton's batcher idle waits (overload.py)
    assert acc["p99"] <= r["accepted_check_ms"], (acc, r["accepted_bound_ms"], r["accepted_check_ms"])
    assert r["ok"], r["checks"]
    # and the control, at the same rate, went past that bound: the check can fail
    assert control["accepted_latency_ms"]["p99"] > r["accepted_check_ms"], (control["accepted_latency_ms"], r)
