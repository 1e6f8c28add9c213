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
