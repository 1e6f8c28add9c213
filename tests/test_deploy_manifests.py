"""serve/deploy/*.yaml as a cluster's API server would take them: every document validated
strictly (unknown fields are errors) against the Kubernetes API schemas that
kubernetes-validate ships, for every Kubernetes version it ships. Offline.

How the documents hang together (probes, volumes, ports) is checked in
tests/test_reliability.py.
"""
from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate as kv  # the test extra: a missing install fails here, never skips
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "serve" / "deploy"


def _versions() -> list[str]:
    """Kubernetes versions whose schemas this kubernetes-validate ships, oldest first."""
    schemas = Path(kv.__file__).parent / "kubernetes-json-schema"
    names = {p.name.split("-")[0].lstrip("v") for p in schemas.iterdir() if p.name.startswith("v")}
    return sorted(names, key=lambda v: tuple(int(x) for x in v.split(".")))


def _documents() -> list[tuple[str, dict]]:
    docs = [(f"{f.name}: {d.get('kind')}/{d.get('metadata', {}).get('name')}", d)
            for f in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    assert docs, f"no manifests under {DEPLOY}"
    return docs


def test_the_shipped_schema_versions_are_found():
    versions = _versions()
    assert versions and versions[-1] == kv.latest_version(), versions


@pytest.mark.parametrize("version", _versions())
def test_every_manifest_is_valid_kubernetes(version):
    for where, doc in _documents():
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{where} is not valid Kubernetes {version}: {e.message} at {list(e.path)}")


def test_the_validation_rejects_what_a_cluster_rejects():
    """The check above can fail: a misspelt field and a wrong type are both caught."""
    (dep,) = [d for _, d in _documents() if d["kind"] == "Deployment"]
    version = kv.latest_version()
    typo = copy.deepcopy(dep)
    typo["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # for "resources"
    wrong_type = copy.deepcopy(dep)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, version, strict=True)


# --------------------------------------------------------------------------- hardening
def _kinds() -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for _, d in _documents():
        out.setdefault(d["kind"], []).append(d)
    return out


def _pod() -> dict:
    (dep,) = _kinds()["Deployment"]
    return dep["spec"]["template"]


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec["containers"] + pod_spec.get("initContainers", [])


PROXY = "request-cap"  # the Envoy container in front of Triton


def _image_tags() -> dict[str, str]:
    """Where each recipe names NVIDIA's Triton image, and the tag it names."""
    import re
    from tests.test_triton_backend_rules import _readme_docker_command
    found = {f"triton.yaml {c['name']}": c["image"] for c in _containers(_pod()["spec"]) if c["name"] != PROXY}
    found["Dockerfile"] = re.search(r"^FROM (\S+)", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)
    found["serve/README.md"] = re.search(r"nvcr\.io/nvidia/tritonserver:\S+", _readme_docker_command()).group(0)
    prefix = "nvcr.io/nvidia/tritonserver:"
    assert all(image.startswith(prefix) for image in found.values()), found
    return {where: image[len(prefix):] for where, image in found.items()}


def test_every_recipe_runs_one_pinned_patched_triton_release():
    """One tag everywhere, at or after 25.07 (the first release outside NVIDIA's August 2025
    bulletin) and so after 24.04 (the first onnxruntime backend that reads the
    trt_profile_* and trt_layer_norm_fp32_fallback keys the gpu target writes)."""
    import re
    tags = _image_tags()
    assert len(set(tags.values())) == 1, tags
    (tag,) = set(tags.values())
    found = re.fullmatch(r"(\d\d)\.(\d\d)-py3", tag)
    assert found, f"{tag}: pin a release tag, not a moving one"
    release = (int(found.group(1)), int(found.group(2)))
    assert release >= (25, 7) and release >= (24, 4), tag


def test_pod_runs_unprivileged():
    pod = _pod()["spec"]
    assert pod["automountServiceAccountToken"] is False
    ctx = pod["securityContext"]
    assert ctx["runAsNonRoot"] is True and int(ctx["runAsUser"]) != 0 and int(ctx["runAsGroup"]) != 0
    assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
    for c in _containers(pod):
        sc = c.get("securityContext", {})
        assert sc.get("allowPrivilegeEscalation") is False, c["name"]
        assert sc.get("readOnlyRootFilesystem") is True, c["name"]
        assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), c["name"]
        assert not sc.get("privileged") and sc.get("runAsUser", 1) != 0, c["name"]


def test_what_triton_writes_is_a_volume_on_a_read_only_root():
    """/tmp, the TensorRT cache and /dev/shm are the places Triton and its stubs write."""
    from ofaserve.serve.repository import TRT_CACHE_ROOT
    pod = _pod()["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (triton,) = [c for c in pod["containers"] if c["name"] == "triton"]
    mounts = {m["mountPath"]: volumes[m["name"]] for m in triton["volumeMounts"]}
    for path in ("/tmp", TRT_CACHE_ROOT, "/dev/shm"):
        assert "emptyDir" in mounts[path] or "hostPath" in mounts[path] or "persistentVolumeClaim" in mounts[path], path
    for c in pod.get("initContainers", []):
        writes = [m for m in c.get("volumeMounts", []) if not m.get("readOnly")]
        assert all("emptyDir" in volumes[m["name"]] for m in writes), c["name"]


def test_server_command_restricts_the_admin_apis_with_a_secret_key():
    from ofaserve.serve.server import restriction_flags
    (triton,) = [c for c in _pod()["spec"]["containers"] if c["name"] == "triton"]
    args = triton.get("command", []) + triton.get("args", [])
    assert set(restriction_flags("$(OFASERVE_TRITON_KEY)")) <= set(args), args
    env = {e["name"]: e for e in triton["env"]}
    assert env["OFASERVE_TRITON_KEY"]["valueFrom"]["secretKeyRef"]["name"]  # never a literal in the manifest
    assert "value" not in env["OFASERVE_TRITON_KEY"]


def test_network_policy_admits_only_clients_and_the_scraper():
    pod = _pod()
    (policy,) = _kinds()["NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    declared = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    ports = {p["name"] for p in declared} | {p["containerPort"] for p in declared}
    for rule in spec["ingress"]:
        assert rule.get("from") and all(peer for peer in rule["from"]), rule  # no rule open to every source
        assert rule.get("ports") and {p["port"] for p in rule["ports"]} <= ports, rule
    admitted = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert {"grpc", "metrics"} <= admitted


def test_documented_docker_command_publishes_on_loopback_and_restricts():
    import re
    import shlex
    from ofaserve.serve.server import restriction_flags
    from tests.test_triton_backend_rules import _readme_docker_command
    command = _readme_docker_command()
    published = re.findall(r"(?:^|\s)(?:-p|--publish)[= ]?(\S+)", command)
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    words = shlex.split(command)
    inner = shlex.split(words[-1])  # bash -c '...'
    assert set(restriction_flags("$OFASERVE_TRITON_KEY")) <= set(inner), inner
    for flag in ("--read-only", "--cap-drop", "no-new-privileges", "--user"):
        assert flag in words, flag


# --------------------------------------------------------------------------- gpu variant
def _gpu_deployment() -> dict:
    import json

    import jsonpatch
    (dep,) = _kinds()["Deployment"]
    patch = jsonpatch.JsonPatch(json.loads((DEPLOY / "gpu-patch.json").read_text()))
    return patch.apply(copy.deepcopy(dep))


def test_gpu_variant_requests_a_gpu_and_stays_valid():
    """A --target gpu repository's encoders are KIND_GPU instances, which Triton fails to
    load in a container that sees no GPU: the gpu patch requests one, the base does not."""
    gpu = _gpu_deployment()
    kv.validate(gpu, kv.latest_version(), strict=True)
    (triton,) = [c for c in gpu["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1" == triton["resources"]["requests"]["nvidia.com/gpu"]
    (base,) = [c for c in _pod()["spec"]["containers"] if c["name"] == "triton"]
    assert "nvidia.com/gpu" not in base["resources"]["limits"]


def test_gpu_patch_is_what_kubectl_applies():
    """kubectl (where installed) applies the same patch offline to the same result."""
    import json
    import shutil
    import subprocess
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("no kubectl here; test_gpu_variant_requests_a_gpu_and_stays_valid applies the patch itself")
    (dep,) = _kinds()["Deployment"]
    r = subprocess.run([kubectl, "patch", "--local", "-f", "-", "--type", "json", "--patch-file",
                        str(DEPLOY / "gpu-patch.json"), "-o", "json"], input=json.dumps(dep), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["spec"] == _gpu_deployment()["spec"]


# --------------------------------------------------------------------------- request-size cap
def _proxy() -> tuple[dict, dict]:
    """(the proxy container, its Envoy config) of the pod."""
    pod = _pod()["spec"]
    (proxy,) = [c for c in pod["containers"] if c["name"] == PROXY]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_path = proxy["args"][proxy["args"].index("-c") + 1]
    mount = next(m for m in proxy["volumeMounts"] if config_path.startswith(m["mountPath"] + "/"))
    (cm,) = [d for d in _kinds()["ConfigMap"] if d["metadata"]["name"] == volumes[mount["name"]]["configMap"]["name"]]
    return proxy, yaml.safe_load(cm["data"][config_path[len(mount["mountPath"]) + 1:]])


def _largest_default_request_bytes() -> int:
    """The gRPC message of the largest request the default limits of `ofaserve repo` accept
    for a 128-token sentence-pair export at the default max_batch_size: every row of both
    inputs a text of max_text_bytes (the 5-byte gRPC frame prefix included)."""
    import numpy as np
    from tritonclient.grpc import InferInput
    from tritonclient.grpc._utils import _get_inference_request
    from ofaserve.serve.cli import repo_parser
    from ofaserve.serve.repository import text_limits

    batch = repo_parser().get_default("max_batch_size")
    from ofaserve.core.manifests import ExportManifest
    from ofaserve.core.tasks import TaskSpec
    manifest = ExportManifest(max_seq_length=128, labels=["a", "b"], task_spec=TaskSpec("t", labels=("a", "b"), pair=True))
    limits = text_limits(manifest, batch)
    per_row = min(limits.max_text_bytes, limits.max_request_bytes // (2 * batch))
    inputs = []
    for name in ("TEXT", "TEXT_PAIR"):
        arr = np.array([[b"x" * per_row]] * batch, dtype=object)
        inputs.append(InferInput(name, list(arr.shape), "BYTES"))
        inputs[-1].set_data_from_numpy(arr)
    request = _get_inference_request("bert_w100", inputs, "", "", None, 0, False, False, 0, None, None)
    return request.ByteSize() + 5


def _listeners(envoy: dict) -> dict[int, dict]:
    return {l["address"]["socket_address"]["port_value"]: l for l in envoy["static_resources"]["listeners"]}


def test_every_byte_reaches_triton_through_the_request_cap():
    """Triton's gRPC server has no message-size flag (it takes up to 2 GiB): the proxy caps
    every body before Triton sees it, and Triton listens only on the pod's loopback."""
    proxy, envoy = _proxy()
    pod = _pod()["spec"]
    (triton,) = [c for c in pod["containers"] if c["name"] == "triton"]
    args = triton["args"]
    assert "--grpc-address=127.0.0.1" in args and "--http-address=127.0.0.1" in args
    triton_ports = {int(a.split("=")[1]) for a in args if a.startswith(("--grpc-port=", "--http-port="))}
    clusters = {c["name"]: c for c in envoy["static_resources"]["clusters"]}
    caps = set()
    for port, listener in _listeners(envoy).items():
        (chain,) = listener["filter_chains"]
        (hcm,) = chain["filters"]
        filters = [f["name"] for f in hcm["typed_config"]["http_filters"]]
        assert filters == ["envoy.filters.http.buffer", "envoy.filters.http.router"], (port, filters)  # cap first
        caps.add(hcm["typed_config"]["http_filters"][0]["typed_config"]["max_request_bytes"])
        (vhost,) = hcm["typed_config"]["route_config"]["virtual_hosts"]
        (cluster,) = {r["route"]["cluster"] for r in vhost["routes"]}
        (endpoint,) = [e["endpoint"]["address"]["socket_address"] for g in clusters[cluster]["load_assignment"]["endpoints"]
                       for e in g["lb_endpoints"]]
        assert endpoint["address"] == "127.0.0.1" and endpoint["port_value"] in triton_ports, (port, endpoint)
    (cap,) = caps
    # what the Service and the NetworkPolicy send clients to is the proxy, for both protocols
    proxy_ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert set(proxy_ports) == {"http", "grpc"} and set(proxy_ports.values()) == set(_listeners(envoy))
    (svc,) = _kinds()["Service"]
    targets = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
    assert all(targets[n] in (n, proxy_ports[n]) for n in ("http", "grpc")), targets
    # the gRPC listener speaks HTTP/2 to Triton
    (grpc_route,) = {r["route"]["cluster"] for l in [_listeners(envoy)[proxy_ports["grpc"]]]
                     for r in l["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]}
    opts = clusters[grpc_route]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    # Triton's own HTTP server refuses the same size (its --http-max-input-size exists from 2.59)
    assert f"--http-max-input-size={cap}" in args
    # the probes reach Triton through the proxy, as clients do
    for probe in ("startupProbe", "readinessProbe"):
        assert triton[probe]["httpGet"]["port"] == proxy_ports["http"], probe


def test_the_cap_admits_what_the_default_limits_accept_and_little_more():
    """The cap is sized from the text limits, not picked: it admits the largest request the
    default limits accept (so those get the model's own clear error, not a proxy's 413) and
    is not more than twice that."""
    _, envoy = _proxy()
    (cap,) = {f["typed_config"]["max_request_bytes"] for l in _listeners(envoy).values()
              for f in l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
              if f["name"] == "envoy.filters.http.buffer"}
    largest = _largest_default_request_bytes()
    assert largest <= cap <= 2 * largest, (largest, cap)


def test_documented_docker_command_caps_http_bodies_like_the_pod():
    import shlex
    from tests.test_triton_backend_rules import _readme_docker_command
    _, envoy = _proxy()
    (cap,) = {f["typed_config"]["max_request_bytes"] for l in _listeners(envoy).values()
              for f in l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
              if f["name"] == "envoy.filters.http.buffer"}
    inner = shlex.split(shlex.split(_readme_docker_command())[-1])
    assert f"--http-max-input-size={cap}" in inner, inner


def test_the_proxy_runs_a_pinned_release_and_writes_nothing():
    import re
    proxy, envoy = _proxy()
    assert re.fullmatch(r"envoyproxy/envoy(-distroless)?:v\d+\.\d+\.\d+", proxy["image"]), proxy["image"]
    assert "admin" not in envoy  # no admin interface on the pod's network
    assert "--disable-hot-restart" in proxy["args"]  # hot restart needs /dev/shm, which the proxy has not
    assert all(m.get("readOnly") for m in proxy["volumeMounts"])
