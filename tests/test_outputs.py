"""Stage outputs (ofaserve.core.outputs, core.files, the path checks of core.manifests and
the error lines of core.stage_cli): what an output folder may be, the lock on it, what is
synced before and after the swap, manifest paths confined to their folder, and the one
`error:` line for a full disk or a refused write."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from ofaserve.core import outputs
from ofaserve.core.errors import OfaserveError
from ofaserve.core import files
from ofaserve.core.manifests import read_manifest, write_manifest
from ofaserve.core.stage_cli import run_stage



def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ------------------------------------------------------------------------------ check_output_dir
@pytest.mark.parametrize("case,expect", [
    ("file", "exists and is not a folder"),
    ("foreign", "holds other content"),
    ("hidden_only", "holds other content"),  # a .git or .env is someone's work too
    ("other_stage", "holds the output of stage 'compress'"),
    ("corrupt_manifest", "holds other content"),
    ("under_a_file", "is not a folder"),
    ("inside_input", "is inside the input"),
    ("holds_input", "inside the output dir"),
    ("is_input", "is the input"),
])
def test_refused_outputs_are_one_error_and_nothing_is_made(case, expect, tmp_path):
    out, inputs = tmp_path / "out", []
    src = tmp_path / "src"
    src.mkdir()
    if case == "file":
        out.write_text("x")
    elif case in ("foreign", "hidden_only"):
        out.mkdir()
        (out / (".git" if case == "hidden_only" else "notes.txt")).write_text("mine")
    elif case == "other_stage":
        write_manifest(out, "compress")
    elif case == "corrupt_manifest":
        out.mkdir()
        (out / "manifest.json").write_text("{not json")
    elif case == "under_a_file":
        (tmp_path / "blocker").write_text("x")
        out = tmp_path / "blocker" / "out"
    elif case == "inside_input":
        out, inputs = src / "out", [src]
    elif case == "holds_input":
        out = tmp_path / "runs"
        (out / "compress").mkdir(parents=True)
        write_manifest(out, "repo")
        inputs = [out / "compress"]
    elif case == "is_input":
        out, inputs = src, [src]
    before = _listing(tmp_path)
    with pytest.raises(OfaserveError, match=expect):
        outputs.check_output_dir(out, stage="repo", inputs=inputs)
    assert _listing(tmp_path) == before


def test_accepted_outputs(tmp_path):
    outputs.check_output_dir(tmp_path / "new" / "deeper", stage="repo")  # parents made later, not here
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    outputs.check_output_dir(tmp_path / "empty", stage="repo")
    write_manifest(tmp_path / "previous", "repo")
    outputs.check_output_dir(tmp_path / "previous", stage="repo")
    (tmp_path / "readme_only").mkdir()
    (tmp_path / "readme_only" / "README.md").write_text("tracked")
    outputs.check_output_dir(tmp_path / "readme_only", stage="repo", keep=("README.md",))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    outputs.check_output_dir(tmp_path / "foreign", stage="repo", overwrite=True)  # the user said so
    with pytest.raises(OfaserveError, match="inside the input"):  # but never into an input
        outputs.check_output_dir(tmp_path / "foreign" / "x", stage="repo", overwrite=True,
                                 inputs=[tmp_path / "foreign"])
    outputs.check_output_dir(tmp_path / "out", stage="repo", inputs=["not-a-path-model-name", None])


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_unwritable_parent_is_refused_before_work(code, tmp_path, monkeypatch):
    """Root passes os.access on a read-only mount: the check makes (and removes) a probe."""
    def refuse(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path))

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refuse)
    with pytest.raises(OfaserveError, match=f"not writable .{os.strerror(code)}"):
        outputs.check_output_dir(tmp_path / "out", stage="repo")


# ------------------------------------------------------------------------------ swap
def test_kept_files_survive_the_swap(tmp_path):
    final = tmp_path / "model_repository"
    final.mkdir()
    (final / "README.md").write_text("tracked")
    with outputs.atomic_output_dir(final, keep=("README.md",)) as tmp:
        (tmp / "m").mkdir()
    assert sorted(p.name for p in final.iterdir()) == ["README.md", "m"]
    assert (final / "README.md").read_text() == "tracked"
    with outputs.atomic_output_dir(final, keep=("README.md",)) as tmp:
        (tmp / "n").mkdir()
    assert sorted(p.name for p in final.iterdir()) == ["README.md", "n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_repository"]  # no temp, old or lock file left


def _record_fsyncs(monkeypatch) -> list[tuple[str, str]]:
    """Every os.fsync (by path) and os.replace (by destination), in order."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        events.append(("replace", str(Path(dst).absolute())))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_swapped_output_is_synced_before_the_rename_and_its_parent_after(tmp_path, monkeypatch):
    final = tmp_path / "out"
    events = _record_fsyncs(monkeypatch)
    with outputs.atomic_output_dir(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"w" * 1000)
        (tmp / "config.txt").write_text("c")
        names = [str(p) for p in (tmp / "sub" / "weights.bin", tmp / "config.txt", tmp / "sub", tmp)]
    swap = events.index(("replace", str(final)))
    synced_before = {p for kind, p in events[:swap] if kind == "fsync"}
    assert set(names) <= synced_before, (names, events)
    assert ("fsync", str(tmp_path)) in events[swap:]


def test_write_json_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    events = _record_fsyncs(monkeypatch)
    files.write_json(tmp_path / "manifest.json", {"stage": "x"})
    kinds = [k for k, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert events[0][1].startswith(str(tmp_path / ".manifest.json."))  # the temp file, before the rename
    assert events[2] == ("fsync", str(tmp_path))
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"stage": "x"}


# ------------------------------------------------------------------------------ lock
def test_second_run_on_an_output_stops_naming_the_first(tmp_path, held_by_another_process):
    out = tmp_path / "out"
    other = held_by_another_process(out)
    # the other run's temp folder: a second run must not take it for a dead one's and remove it
    theirs = tmp_path / f".out.tmp-{other.pid}-abc"
    theirs.mkdir()
    with pytest.raises(OfaserveError, match=f"being written by another run \\(pid {other.pid}: "):
        with outputs.output_lock(out):
            pass
    with pytest.raises(OfaserveError, match=f"pid {other.pid}"):
        with outputs.atomic_output_dir(out):
            pass
    assert theirs.is_dir() and not out.exists()
    other.stdin.close()
    other.wait(30)
    with outputs.output_lock(out):  # free again once the other run ended
        with outputs.atomic_output_dir(out) as tmp:  # re-entrant in one process
            (tmp / "a").write_text("a")
    assert not outputs.lock_path(out).exists()  # removed on release


# ------------------------------------------------------------------------------ work folder
def test_work_folder_is_removed_only_when_the_stage_made_it(tmp_path):
    out = tmp_path / "out"
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "draft.txt").write_text("mine")
    with pytest.raises(OfaserveError, match="was not made by ofaserve compress"):
        outputs.check_work_dir(out, stage="compress", keep_it=False)
    outputs.check_work_dir(out, stage="compress", keep_it=True)  # --resume / --overwrite: the user's word
    assert (partial / "draft.txt").read_text() == "mine"
    (partial / "draft.txt").unlink()
    outputs.fresh_work_dir(out, stage="compress", resume=False)
    (partial / "teacher").mkdir()
    outputs.check_work_dir(out, stage="compress", keep_it=False)  # marked: a stale run of this stage
    outputs.fresh_work_dir(out, stage="compress", resume=False)
    assert sorted(p.name for p in partial.iterdir()) == [outputs.WORK_MARKER]


# ------------------------------------------------------------------------------ manifest paths
@pytest.mark.parametrize("rel,expect", [
    ("/etc/hostname", "leaves its folder"),
    ("../secret.onnx", "leaves its folder"),
    ("onnx/../../secret.onnx", "leaves its folder"),
    ("onnx/escape.onnx", "is a symlink to"),
    ("", "not a relative path"),
])
def test_manifest_paths_stay_in_their_folder(rel, expect, tmp_path):
    (tmp_path / "secret.onnx").write_text("not yours")
    export = tmp_path / "export"
    (export / "onnx").mkdir(parents=True)
    (export / "onnx" / "model.onnx").write_text("onnx")
    (export / "onnx" / "escape.onnx").symlink_to(tmp_path / "secret.onnx")
    (export / "onnx" / "inside.onnx").symlink_to(export / "onnx" / "model.onnx")
    write_manifest(export, "export", artifacts={"onnx": "onnx/model.onnx", "inside": "onnx/inside.onnx"})
    assert read_manifest(export, "export")["artifacts"]["inside"] == "onnx/inside.onnx"  # a symlink inside is fine
    write_manifest(export, "export", artifacts={"onnx": rel})
    with pytest.raises(OfaserveError, match=expect):
        read_manifest(export, "export")
    with pytest.raises(OfaserveError, match=expect):
        files.confined_path(export, rel, "artifacts['onnx']")


def test_every_path_field_is_checked(tmp_path):
    for field, value in (("checkpoints", {"teacher": "../t.pdparams"}), ("tokenizer", {"vocab": "/v.txt"}),
                         ("paddle_static_files", ["static/model.json", "../x.pdiparams"])):
        write_manifest(tmp_path / field, "compress", **{field: value})
        with pytest.raises(OfaserveError, match=f"{field}\\["):
            read_manifest(tmp_path / field)


# ------------------------------------------------------------------------------ stage_cli
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS])
def test_refused_writes_are_one_error_line(code, tmp_path, capsys):
    def work():
        raise OSError(code, os.strerror(code), str(tmp_path / "out.tmp" / "model.onnx"))

    rc, _ = run_stage(work, str(tmp_path / "out"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0] == f"error: {os.strerror(code)}: {tmp_path / 'out.tmp' / 'model.onnx'}; {tmp_path / 'out'} is unchanged"


def test_refused_write_wrapped_by_a_library_is_found(tmp_path, capsys):
    def work():
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("paddle.save failed") from e

    rc, _ = run_stage(work, None)
    assert rc == 2 and capsys.readouterr().err.strip() == "error: No space left on device"


def test_other_os_errors_stay_bugs_with_their_traceback(tmp_path):
    def work():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")

    with pytest.raises(FileNotFoundError):
        run_stage(work, str(tmp_path))


def test_interrupt_without_an_output(capsys):
    def work():
        raise KeyboardInterrupt

    rc, _ = run_stage(work, None)
    assert rc == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_probe_leaves_nothing(tmp_path):
    outputs.check_output_dir(tmp_path / "a" / "out", stage="repo")
    assert list(tmp_path.iterdir()) == []


# A module run with `python -m`: a KeyboardInterrupt passes through a C-level PyRun_* call (as
# one can while a library imports), then the stage handles it and exits 130.
_INTERRUPT_THROUGH_PYRUN = """
import ctypes, sys
from ofaserve.core.stage_cli import run_stage

def work():
    ctypes.pythonapi.PyRun_SimpleString(b"raise KeyboardInterrupt")  # sets CPython's flag
    raise KeyboardInterrupt

if sys.argv[1] == "stage":
    sys.exit(run_stage(work, None)[0])
try:
    work()
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_a_handled_interrupt_exits_130_under_python_m(tmp_path):
    """Without ``forget_unhandled_interrupt`` CPython exits such a run by SIGINT (the bare
    branch shows the flag is real here); the stage's handled interrupt keeps its 130."""
    import signal
    import subprocess
    import sys

    (tmp_path / "interrupt_through_pyrun.py").write_text(_INTERRUPT_THROUGH_PYRUN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}

    def run(branch: str) -> int:
        return subprocess.run([sys.executable, "-m", "interrupt_through_pyrun", branch], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120).returncode

    assert run("bare") == -signal.SIGINT
    assert run("stage") == 130
