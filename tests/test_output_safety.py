"""No stage loses a user's work: each checks its outputs before any work, replaces only
what a previous run of it made (or what --overwrite names), stops when another run holds
its output, copies only files inside the folders its manifests describe, and ends a full
disk, a refused write or Ctrl-C/SIGTERM with one line (exit 2 / 130), nothing half-written.

On the real stages: `ofaserve repo` on the tiny export, `ofaserve export` and
`ofaserve compress` on the tiny checkpoint, `ofaserve classify` against the real server.
The full disk and the refused write are an OSError raised where a file is written (this
machine runs as root, so a chmod would not refuse anything)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ofaserve.core import outputs
from ofaserve.core.errors import OfaserveError
from ofaserve.core.manifests import read_manifest, write_manifest
from ofaserve.runtime import runtimes
from ofaserve.serve import repository
from ofaserve.serve.cli import classify_main, repo_main

ROOT = Path(__file__).resolve().parents[1]
OFASERVE = [sys.executable, "-m", "ofaserve.cli"]


def _one_error(capsys) -> str:
    """The one `error:` line a failed stage ends with (its INFO log lines may come before)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in err, err
    return lines[-1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_temp_next_to(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _repo_argv(export: Path, out: Path, *extra: str) -> list[str]:
    return ["--export_dir", str(export), "--output", str(out), "--precision", "fp32", *extra]


def _failing_copy(monkeypatch, code: int, when) -> None:
    """shutil.copy2 raises OSError(code) for a destination ``when`` accepts (a full disk,
    a refused write at that file); every other copy is real."""
    real = shutil.copy2

    def copy2(src, dst, *a, **k):
        if when(Path(dst)):
            raise OSError(code, os.strerror(code), str(dst))
        return real(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copy2", copy2)


# ============================================================================ repo
def test_repo_writes_next_to_the_tracked_readme(tiny_export_dir, tmp_path, capsys):
    """model_repository/ of a clean clone holds its README: a repository goes in beside it."""
    out = tmp_path / "model_repository"
    out.mkdir()
    shutil.copy2(ROOT / "model_repository" / "README.md", out / "README.md")
    readme = (out / "README.md").read_bytes()
    for _ in range(2):  # the second run replaces the first repository, and keeps the README again
        assert repo_main(_repo_argv(tiny_export_dir, out)) == 0, capsys.readouterr().err
        assert (out / "README.md").read_bytes() == readme
        assert read_manifest(out, "repo")["models"]
    assert _no_temp_next_to(out) == []


@pytest.mark.parametrize("case,expect", [
    ("foreign", "holds other content"),
    ("file", "exists and is not a folder"),
    ("inside_export", "is inside the input"),
])
def test_repo_checks_its_output_before_timing_precisions(case, expect, tiny_export_dir, tmp_path, monkeypatch):
    def timing(*a, **k):
        raise AssertionError("precision candidates were timed before the output was checked")

    monkeypatch.setattr(repository, "choose_precision", timing)
    out = tmp_path / "out"
    if case == "foreign":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "file":
        out.write_text("mine")
    else:
        out = tiny_export_dir / "repo"
    with pytest.raises(OfaserveError, match=expect):
        repository.build_repository([tiny_export_dir], out)  # precision auto: the costly default
    if case == "foreign":
        assert (out / "notes.txt").read_text() == "mine"
    assert not (tiny_export_dir / "repo").exists()


@pytest.mark.parametrize("kwargs,message", [(dict(threads=-1), "threads must be >= 1"),
                                            (dict(auto_budget_s=0), "auto_budget_s must be > 0")])
def test_repo_checks_every_argument_before_timing(kwargs, message, tiny_export_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(repository, "choose_precision", lambda *a, **k: pytest.fail("timed before checking"))
    with pytest.raises(OfaserveError, match=message):
        repository.build_repository([tiny_export_dir], tmp_path / "out", **kwargs)


def test_repo_overwrite_replaces_a_foreign_folder_only_when_asked(tiny_export_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert repo_main(_repo_argv(tiny_export_dir, out)) == 2
    assert "pass --overwrite" in _one_error(capsys) and (out / "notes.txt").read_text() == "mine"
    assert repo_main(_repo_argv(tiny_export_dir, out, "--overwrite")) == 0
    assert not (out / "notes.txt").exists() and read_manifest(out, "repo")


def test_repo_stops_when_another_run_holds_its_output(tiny_export_dir, tmp_path, held_by_another_process):
    out = tmp_path / "out"
    other = held_by_another_process(out)
    theirs = tmp_path / f".out.tmp-{other.pid}-x"  # what the other run is building
    theirs.mkdir()
    with pytest.raises(OfaserveError, match=f"another run \\(pid {other.pid}"):
        repository.build_repository([tiny_export_dir], out, precision="fp32")
    assert theirs.is_dir() and not out.exists()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_repo_copies_no_file_from_outside_the_export(how, tiny_export_dir, tmp_path, capsys):
    """An export manifest naming ../x, /x or a symlink out of the folder is refused where it is
    read: the repository (which Triton would serve) gets nothing from elsewhere."""
    export = tmp_path / "export"
    shutil.copytree(tiny_export_dir, export)
    outside = tmp_path / "outside.onnx"
    shutil.copy2(export / "onnx" / "model.onnx", outside)  # a valid model: only the path is wrong
    m = json.loads((export / "manifest.json").read_text())
    if how == "dotdot":
        m["artifacts"]["onnx"] = "../outside.onnx"
    elif how == "absolute":
        m["artifacts"]["onnx"] = str(outside)
    else:
        (export / "onnx" / "link.onnx").symlink_to(outside)
        m["artifacts"]["onnx"] = "onnx/link.onnx"
    (export / "manifest.json").write_text(json.dumps(m))
    out = tmp_path / "repo"
    assert repo_main(_repo_argv(export, out, "--runtime", "onnxruntime")) == 2
    err = _one_error(capsys)
    assert "artifacts['onnx']" in err and ("leaves its folder" in err or "symlink" in err), err
    assert not out.exists() and _no_temp_next_to(out) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_repo_refused_write_is_one_line_and_the_previous_repository_stays(code, tiny_export_dir, tmp_path,
                                                                          monkeypatch, capsys):
    out = tmp_path / "repo"
    assert repo_main(_repo_argv(tiny_export_dir, out)) == 0
    before = _snapshot(out)
    capsys.readouterr()
    _failing_copy(monkeypatch, code, lambda dst: dst.name == "model.onnx")
    assert repo_main(_repo_argv(tiny_export_dir, out)) == 2
    err = _one_error(capsys)
    assert err.startswith(f"error: {os.strerror(code)}: ") and "model.onnx" in err and err.endswith(
        f"{out} is unchanged"), err
    assert _snapshot(out) == before and _no_temp_next_to(out) == []


def test_repo_unwritable_parent_is_refused_before_work(tiny_export_dir, tmp_path, monkeypatch, capsys):
    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path))

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(repository, "choose_precision", lambda *a, **k: pytest.fail("timed before checking"))
    assert repo_main(["--export_dir", str(tiny_export_dir), "--output", str(tmp_path / "out")]) == 2
    assert "Read-only file system" in _one_error(capsys)


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _interrupted(argv: list[str], ready, what: str, sig: int = signal.SIGINT, settle_s: float = 0.0,
                 timeout: float = 180) -> tuple[int, str, str]:
    """Run `ofaserve ARGV`, send ``sig`` once ``ready()`` (and ``settle_s`` more) while it still
    works; (exit code, stdout, stderr)."""
    proc = subprocess.Popen(OFASERVE + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        _wait_for(lambda: ready() or proc.poll() is not None, timeout, what)
        time.sleep(settle_s)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in err, err
    return proc.returncode, out, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_repo_interrupted_exits_130_and_keeps_the_previous_repository(sig, tiny_export_dir, tmp_path, capsys):
    out = tmp_path / "repo"
    assert repo_main(_repo_argv(tiny_export_dir, out)) == 0
    before = _snapshot(out)
    # precision auto times the candidates for --auto_budget_s: the signal arrives while it does
    rc, _, err = _interrupted(["repo", "--export_dir", str(tiny_export_dir), "--output", str(out),
                               "--auto_budget_s", "120"], outputs.lock_path(out).exists, "the run's lock", sig,
                              settle_s=1.0)
    assert rc == 130 and err.strip().splitlines()[-1] == f"interrupted: {out} is unchanged", err
    assert _snapshot(out) == before and _no_temp_next_to(out) == []


# ============================================================================ classify
@pytest.fixture(scope="module")
def served(tiny_export_dir, tmp_path_factory):
    from ofaserve.serve.server import TritonServer, free_port

    repo = tmp_path_factory.mktemp("classify") / "repo"
    (model,) = repository.build_repository([tiny_export_dir], repo, precision="fp32").to_dict()["models"]
    srv = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    srv.start(timeout=180)
    yield srv, model
    srv.stop()


@pytest.mark.integration
def test_classify_interrupted_exits_130_with_one_line(served, tmp_path):
    import tritonclient.grpc as grpcclient

    srv, model = served
    lines = tmp_path / "sentences.txt"
    lines.write_text("a fine film with a dull end\n" * 50_000)  # one per request: minutes of work
    client = grpcclient.InferenceServerClient(srv.grpc_url)

    def answered() -> int:
        stats = client.get_inference_statistics(model).model_stats
        return sum(s.inference_stats.success.count for s in stats)

    start = answered()
    try:
        rc, out, err = _interrupted(["classify", "--url", srv.grpc_url, "--model", model, "--file", str(lines),
                                     "--batch_size", "1"], lambda: answered() > start + 20, "classify's first answers")
    finally:
        client.close()
    assert rc == 130 and err.strip() == "interrupted", err
    assert out == ""  # no half of the answers
    assert all(srv.models_ready().values())


def test_classify_unreadable_file_is_one_line(tmp_path, monkeypatch, capsys):
    lines = tmp_path / "sentences.txt"
    lines.write_text("fine\n")
    real = Path.read_text

    def refused(self, *a, **k):
        if self == lines:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", refused)
    assert classify_main(["--file", str(lines), "--url", "127.0.0.1:1"]) == 2
    assert _one_error(capsys) == f"error: Permission denied: {lines}"


@pytest.mark.parametrize("where", ["mkdtemp", "copytree"])
def test_serve_full_disk_is_one_line(where, tiny_export_dir, tmp_path, monkeypatch, capsys):
    """No room for the server's work folder (made, or filled by the copy of the server,
    whose failure shutil reports as a list of files): one line, exit 2, nothing left
    running, no work folder left behind."""
    import shutil

    from ofaserve.serve import server
    from ofaserve.serve.cli import serve_main

    repo = tmp_path / "repo"
    repository.build_repository([tiny_export_dir], repo, precision="fp32")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(server.tempfile, "tempdir", str(scratch))
    reason = os.strerror(errno.ENOSPC)

    def full(*a, **k):
        if where == "mkdtemp":
            raise OSError(errno.ENOSPC, reason, str(scratch / "ofaserve-triton-x"))
        raise shutil.Error([(f"src{i}", f"dst{i}", f"[Errno {errno.ENOSPC}] {reason}") for i in range(3)])

    monkeypatch.setattr(server.tempfile if where == "mkdtemp" else server.shutil, where, full)
    ports = [str(server.free_port()) for _ in range(3)]
    assert serve_main(["--model_repository", str(repo), "--grpc_port", ports[0], "--http_port", ports[1],
                       "--metrics_port", ports[2]]) == 2
    line = _one_error(capsys)
    assert line.startswith(f"error: cannot copy the Triton server into a working folder under {scratch}: ")
    assert reason in line and "TMPDIR" in line
    assert ("and 2 more files" in line) == (where == "copytree")
    assert list(scratch.glob("ofaserve-triton-*")) == []  # (the user's key folder stays: it is shared)
    assert [p for p in scratch.rglob("*") if p.is_file()] == []  # this launch's key is removed


# ============================================================================ export
def _export_argv(compress_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(compress_dir), "--output_dir", str(out), "--width_mult", "0.5",
            "--no_precisions", "--no_progress", *extra]


def test_export_checks_the_sub_model_copy_before_any_work(tiny_compress_dir, tmp_path, monkeypatch, capsys):
    """--sub_model_output_dir used to be swapped over whatever was there, after the export."""
    from ofaserve.export import exporter
    from ofaserve.export.cli import main

    monkeypatch.setattr(exporter, "build_artifacts", lambda *a, **k: pytest.fail("export ran before the check"))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    assert main(_export_argv(tiny_compress_dir, tmp_path / "out", "--sub_model_output_dir", str(mine))) == 2
    assert "holds other content" in _one_error(capsys)
    assert (mine / "thesis.tex").read_text() == "precious" and not (tmp_path / "out").exists()


def test_export_copies_replace_only_their_own(tiny_compress_dir, tmp_path, capsys):
    """The sub model copy carries a manifest, so the next export replaces it; the static
    prefix's loose files are replaced only with --overwrite."""
    from ofaserve.export.cli import main

    sub, prefix, out = tmp_path / "sub", tmp_path / "st" / "float", tmp_path / "out"
    copies = ["--sub_model_output_dir", str(sub), "--static_sub_model", str(prefix)]
    assert main(_export_argv(tiny_compress_dir, out, *copies)) == 0, capsys.readouterr().err
    params = prefix.with_name("float.pdiparams")
    first = tmp_path / "first"  # the pair as written: paddle orders the params file by per-process tensor names,
    first.mkdir()               # so a later export's bytes differ while the model is the same
    for f in prefix.parent.glob("float.*"):
        shutil.copy2(f, first / f.name)
    capsys.readouterr()
    assert main(_export_argv(tiny_compress_dir, out, *copies)) == 2
    err = _one_error(capsys)
    assert "float.pdiparams" in err and "pass --overwrite" in err
    params.write_bytes(b"edited by hand")
    assert main(_export_argv(tiny_compress_dir, out, "--sub_model_output_dir", str(sub))) == 0
    assert read_manifest(sub, "export_sub_model") and params.read_bytes() == b"edited by hand"
    assert main(_export_argv(tiny_compress_dir, out, *copies, "--overwrite")) == 0
    assert params.read_bytes() != b"edited by hand"
    ids = np.array([[2, 17, 40, 9, 3], [2, 8, 3, 0, 0]], np.int64)
    logits = [runtimes.load_runner("paddle", p, threads=1)(ids, np.zeros_like(ids)) for p in (first / "float", prefix)]
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-6)  # the export's model again, written whole
    assert not [p for p in tmp_path.rglob(".*tmp*")]


def test_export_output_inside_its_input_is_refused(tiny_compress_dir, capsys):
    from ofaserve.export.cli import main

    assert main(_export_argv(tiny_compress_dir, tiny_compress_dir / "export")) == 2
    assert "is inside the input" in _one_error(capsys) and not (tiny_compress_dir / "export").exists()


def test_export_full_disk_is_one_line_and_the_previous_export_stays(tiny_compress_dir, tiny_export_dir, tmp_path,
                                                                    monkeypatch, capsys):
    from ofaserve.export.cli import main

    out = tmp_path / "w05"
    shutil.copytree(tiny_export_dir, out)  # a previous export at the output
    before = _snapshot(out)
    _failing_copy(monkeypatch, errno.ENOSPC, lambda dst: dst.name == "tokenizer.json")
    assert main(_export_argv(tiny_compress_dir, out)) == 2
    err = _one_error(capsys)
    assert err.startswith("error: No space left on device: ") and err.endswith(f"{out} is unchanged"), err
    assert _snapshot(out) == before and _no_temp_next_to(out) == []


# ============================================================================ compress
def _compress_argv(ckpt: Path, train: Path, dev: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(ckpt), "--train_file", str(train), "--dev_file", str(dev),
            "--output_dir", str(out), "--no_progress", "--max_seq_length", "32", "--num_teacher_epochs", "1",
            "--num_train_epochs", "1", "--importance_samples", "32", "--width_mult_list", "1.0", "0.5"]


def test_compress_keeps_a_work_folder_it_did_not_make(tiny_checkpoint, tmp_path, capsys):
    from ofaserve.compress.cli import main

    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "thesis.tex").write_text("precious")
    assert main(_compress_argv(*tiny_checkpoint, tmp_path / "out")) == 2
    assert "was not made by ofaserve compress" in _one_error(capsys)
    assert (partial / "thesis.tex").read_text() == "precious"


def test_compress_stops_when_another_run_holds_its_output(tiny_checkpoint, tmp_path, held_by_another_process,
                                                          capsys):
    """Two runs on one output used to delete each other's .partial."""
    from ofaserve.compress.cli import main

    out = tmp_path / "out"
    other = held_by_another_process(out)
    theirs = outputs.fresh_work_dir(out, stage="compress", resume=False)  # the other run's work so far
    (theirs / "teacher").mkdir()
    assert main(_compress_argv(*tiny_checkpoint, out)) == 2
    assert f"another run (pid {other.pid}" in _one_error(capsys)
    assert (theirs / "teacher").is_dir()


def test_compress_output_inside_an_input_is_refused(tiny_checkpoint, capsys):
    from ofaserve.compress.cli import main

    ckpt, train, dev = tiny_checkpoint
    assert main(_compress_argv(ckpt, train, dev, ckpt / "out")) == 2
    assert "is inside the input" in _one_error(capsys) and not (ckpt / "out").exists()


def test_compress_full_disk_is_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import paddle

    from ofaserve.compress.cli import main

    out = tmp_path / "out"
    write_manifest(out, "compress", note="a previous output")
    before = _snapshot(out)

    def full(obj, path, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(paddle, "save", full)
    assert main(_compress_argv(*tiny_checkpoint, out)) == 2
    err = _one_error(capsys)
    assert err.startswith("error: No space left on device: ") and err.endswith(f"{out} is unchanged"), err
    assert _snapshot(out) == before and _no_temp_next_to(out) == []


def test_compress_interrupted_exits_130_and_keeps_its_work_folder(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    rc, _, err = _interrupted(["compress", *_compress_argv(*tiny_checkpoint, out)],
                              (outputs.work_dir(out) / outputs.WORK_MARKER).exists, "the work folder")
    assert rc == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted: {out} is unchanged; rerun with --resume to continue", err
    assert not out.exists() and outputs.work_dir(out).is_dir() and not outputs.lock_path(out).exists()
