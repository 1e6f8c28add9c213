"""Triton's admin APIs behind a per-launch key, on the REAL bundled server (2.51).

NVIDIA's August 2025 bulletin (Triton before 25.07) describes an unauthenticated chain
through the shared-memory API into python-backend models, the only kind ofaserve serves.
`TritonServer` restricts shared memory, the model repository, trace and logging as
pytriton's launcher does; the APIs ofaserve's own clients call stay open, and the
clients that call a restricted one (the repository index) carry the key from the
launch's private key file."""
from __future__ import annotations

import json
import stat
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest

from ofaserve.serve.client import classify
from ofaserve.serve.repository import build_repository
from ofaserve.serve.server import (GRPC_KEY_HEADER, KEY_ENV, KEY_HEADER, RESTRICTED_APIS, TritonServer,
                                   admin_headers, free_port, key_path)
from tests.test_serve_export_stub import make_tiny_export

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    export = make_tiny_export(tmp_path_factory.mktemp("restricted_export"), width_mult=1.0)
    out = tmp_path_factory.mktemp("restricted") / "model_repository"
    build_repository([export], out, target="cpu", precision="fp32")
    return out


@pytest.fixture(scope="module")
def server(repo):
    srv = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    srv.start(timeout=180)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    import tritonclient.grpc as grpcclient
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture
def shm_region():
    """A real POSIX shared-memory region of 64 bytes, as a client would register it."""
    import tritonclient.utils.shared_memory as shm
    key = f"/ofaserve_test_{uuid.uuid4().hex[:12]}"
    handle = shm.create_shared_memory_region("ofaserve_test_region", key, 64)
    yield "ofaserve_test_region", key
    shm.destroy_shared_memory_region(handle)


def _refused(call) -> str:
    from tritonclient.utils import InferenceServerException
    with pytest.raises(InferenceServerException) as e:
        call()
    return e.value.message()


def test_unkeyed_shared_memory_registration_is_refused_keyed_accepted(server, client, shm_region):
    name, key = shm_region
    message = _refused(lambda: client.register_system_shared_memory(name, key, 64))
    assert "restricted" in message and GRPC_KEY_HEADER in message, message
    assert _refused(lambda: client.get_system_shared_memory_status()), "status must need the key too"

    headers = server.admin_headers
    client.register_system_shared_memory(name, key, 64, headers=headers)
    try:
        status = client.get_system_shared_memory_status(headers=headers, as_json=True)
        assert name in json.dumps(status), status
    finally:
        client.unregister_system_shared_memory(name, headers=headers)
    # a wrong key is no key
    assert "restricted" in _refused(lambda: client.register_system_shared_memory(
        name, key, 64, headers={GRPC_KEY_HEADER: "not-the-key"}))


def test_every_restricted_grpc_api_needs_the_key(server, client):
    calls = {"model-repository": lambda **h: client.get_model_repository_index(**h),
             "trace": lambda **h: client.get_trace_settings(**h),
             "logging": lambda **h: client.get_log_settings(**h),
             "shared-memory": lambda **h: client.get_cuda_shared_memory_status(**h)}
    assert set(calls) == set(RESTRICTED_APIS)
    for api, call in calls.items():
        assert "restricted" in _refused(call), api
        call(headers=server.admin_headers)  # answers with the key


def test_every_restricted_http_api_needs_the_key(server):
    """The HTTP endpoint carries the same restriction (the header without the gRPC prefix)."""
    urls = {"model-repository": ("POST", "/v2/repository/index"), "trace": ("GET", "/v2/trace/setting"),
            "logging": ("GET", "/v2/logging"), "shared-memory": ("GET", "/v2/systemsharedmemory/status")}
    assert set(urls) == set(RESTRICTED_APIS)
    for api, (method, path) in urls.items():
        def call(headers: dict[str, str]):
            req = urllib.request.Request(server.http_url + path, method=method, headers=headers,
                                         data=b"{}" if method == "POST" else None)
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        with pytest.raises(urllib.error.HTTPError) as e:
            call({})
        assert e.value.code in (401, 403), (api, e.value.code)
        assert call({KEY_HEADER: server.key}) == 200, api


def test_what_clients_need_stays_open(server, client, repo):
    """Inference, health, metadata, model config and statistics answer without the key."""
    assert client.is_server_live() and client.is_server_ready()
    models = sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").is_file())
    for m in models:
        assert client.is_model_ready(m)
        client.get_model_metadata(m)
        client.get_model_config(m)
    client.get_inference_statistics()
    ensemble = next(m for m in models if not m.endswith(("_tokenizer", "_encoder", "_postprocess")))
    (answer,) = classify(["the movie was great fun"], url=server.grpc_url, model=ensemble)
    assert answer["label"] in ("rotten", "fresh")
    assert np.isclose(sum(answer["probs"].values()), 1.0, atol=1e-5)


def test_key_file_is_private_and_found_by_the_client_helper(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = key_path(server.ports["grpc"])
    assert path == server.key_path and path.read_text().strip() == server.key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert admin_headers(server.grpc_url) == server.admin_headers
    assert admin_headers(f"localhost:{server.ports['grpc']}") == server.admin_headers
    assert admin_headers(f"10.1.2.3:{server.ports['grpc']}") == {}  # never sent off this machine
    monkeypatch.setenv(KEY_ENV, "from-a-secret")
    assert admin_headers("10.1.2.3:8001") == {GRPC_KEY_HEADER: "from-a-secret"}


def test_client_lists_served_models_through_the_restricted_index(server, monkeypatch):
    """`ofaserve classify` names the served models when asked for one that is not there:
    the repository index is restricted, so this works only because it carries the key."""
    from ofaserve.core.errors import OfaserveError
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(OfaserveError, match="served models: .*bert_w100"):
        classify(["text"], url=server.grpc_url, model="no_such_model")


def test_each_launch_has_its_own_key_and_removes_its_file(repo):
    keys = []
    for _ in range(2):
        srv = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
        with srv:
            path = srv.key_path
            keys.append(srv.key)
            assert path.is_file() and any(srv.key in a for a in srv.process.args)
        assert not path.exists(), "the key file outlives its server"
    assert keys[0] != keys[1] and all(len(k) >= 32 for k in keys)
