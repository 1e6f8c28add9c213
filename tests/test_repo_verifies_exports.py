"""`ofaserve repo` copies an export's files into a repository only while they are what
`ofaserve export` wrote: the export manifest records the sha256 of every file, and a file
that changed since (tampered, truncated, swapped) is refused with one clear error."""
from __future__ import annotations

import json
import shutil

import pytest

from ofaserve.core.errors import OfaserveError
from ofaserve.core.files import sha256_file
from ofaserve.core.manifests import ExportManifest, read_manifest
from ofaserve.serve.repository import build_repository, encoder_artifact


@pytest.fixture
def export(tiny_export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_export_dir, folder)
    return folder


def test_the_export_records_the_sha256_of_every_file_it_wrote(tiny_export_dir):
    recorded = read_manifest(tiny_export_dir, "export")["files_sha256"]
    on_disk = sorted(p.relative_to(tiny_export_dir).as_posix() for p in tiny_export_dir.rglob("*")
                     if p.is_file() and p.name != "manifest.json")
    assert sorted(recorded) == on_disk
    for rel in ("onnx/model.onnx", "tokenizer/tokenizer.json"):
        assert recorded[rel] == sha256_file(tiny_export_dir / rel)
    assert any(rel.startswith("sub_model/") for rel in recorded)  # the pickles too


@pytest.mark.parametrize("artifact", ["encoder", "tokenizer"])
def test_a_tampered_artifact_is_refused(export, tmp_path, artifact):
    manifest = ExportManifest.read(export)
    if artifact == "encoder":  # the graph this repository's encoder gets
        artifact = encoder_artifact(manifest, "cpu", "onnxruntime", "fp32")
    path = export / manifest.artifacts[artifact]
    with open(path, "ab") as f:
        f.write(b" ")
    out = tmp_path / "repo"
    with pytest.raises(OfaserveError, match="does not match the sha256") as e:
        build_repository([export], out, target="cpu", runtime="onnxruntime", precision="fp32")
    assert "\n" not in str(e.value) and path.name in str(e.value)
    assert not out.exists()


def test_an_export_without_recorded_hashes_is_refused(export, tmp_path):
    manifest = json.loads((export / "manifest.json").read_text())
    del manifest["files_sha256"]
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(OfaserveError, match="records no sha256"):
        build_repository([export], tmp_path / "repo", target="cpu", runtime="onnxruntime", precision="fp32")


def test_an_untouched_export_builds(export, tmp_path):
    manifest = build_repository([export], tmp_path / "repo", target="cpu", runtime="onnxruntime", precision="fp32").to_dict()
    assert manifest["models"]
