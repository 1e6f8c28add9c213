"""The compress pipeline end to end on a tiny model: output layout, manifest, results."""
import json

import numpy as np

from ofaserve.core.manifests import read_manifest
from tests.conftest import TINY_WIDTHS


def test_output_layout_and_manifest(tiny_compress_dir):
    m = read_manifest(tiny_compress_dir, stage="compress")
    for rel in list(m["checkpoints"].values()) + list(m["tokenizer"].values()):
        assert (tiny_compress_dir / rel).is_file(), rel
    assert m["width_mult_list"] == sorted(TINY_WIDTHS, reverse=True)
    assert set(m["results"]["widths"]) == {"1.0", "0.75", "0.5"}
    assert m["labels"] == ["fresh", "rotten"]
    assert json.loads((tiny_compress_dir / "results.json").read_text()) == m["results"]
    assert not (tiny_compress_dir.parent / "out.partial").exists()


def test_reorder_keeps_full_width_function(tiny_compress_dir):
    m = read_manifest(tiny_compress_dir, stage="compress")
    assert m["importance"]["full_width_logits_max_abs_diff_after_reorder"] <= 1e-5
    # heads sorted: the recorded order is a permutation per layer
    for order in m["importance"]["head_order"]:
        assert sorted(order) == list(range(4))


def test_widths_are_different_subnets(tiny_compress_dir):
    """Old paddleslim evaluated the same subnet for every width: logits must differ."""
    import paddle

    from ofaserve.compress.bert import build_classifier
    from ofaserve.compress.ofa import OfaSupernet

    m = read_manifest(tiny_compress_dir, stage="compress")
    model = build_classifier(m["model_config"])
    model.set_state_dict(paddle.load(str(tiny_compress_dir / m["checkpoints"]["supernet"])))
    sn = OfaSupernet(model, m["width_mult_list"])
    ids = np.array([[2, 10, 11, 12, 13, 3], [2, 20, 21, 3, 0, 0]], dtype=np.int64)
    types = np.zeros_like(ids)
    outs = {w: sn.logits_numpy(ids, types, w) for w in sn.widths}
    ws = sorted(outs)
    for a, b in zip(ws, ws[1:]):
        assert np.abs(outs[a] - outs[b]).max() > 1e-4, (a, b)
    # and computing configs in another order gives the same logits (no shared mutable config)
    again = {w: sn.logits_numpy(ids, types, w) for w in reversed(sn.widths)}
    for w in ws:
        np.testing.assert_array_equal(outs[w], again[w])


def test_atomic_output_dir_keeps_previous_and_cleans_stale(tmp_path):
    import subprocess
    import sys

    import pytest

    from ofaserve.core.outputs import atomic_output_dir

    final = tmp_path / "out"
    with atomic_output_dir(final) as tmp:
        (tmp / "a.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("failure mid-write")
    assert (final / "a.txt").read_text() == "good"
    # a temp folder left by a process killed with SIGKILL is removed by the next run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.tmp-{int(dead.stdout)}-abc123"
    stale.mkdir()
    with atomic_output_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
    assert not stale.exists() and (final / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_ctrl_c_during_the_swap_never_leaves_the_output_missing(tmp_path):
    """SIGINT between hiding the old output and renaming the new one into place waits for
    the swap: the output is the complete new one, the old one is cleaned up, and the
    CLI message says so. (A subprocess, so pytest's own signal handlers stay as they are.)"""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from pathlib import Path
import ofaserve.core.interrupts as i
import ofaserve.core.outputs as a
i.terminate_like_interrupt()
final = Path({str(tmp_path / 'out')!r})
with a.atomic_output_dir(final) as tmp:
    (tmp / "a.txt").write_text("old")
import threading
# A Ctrl-C is process-directed: the kernel may hand it to any thread, such as a BLAS pool's.
# Sending it to another thread makes that case certain: Python then runs its handler in the
# main thread at once, whatever the main thread's signal mask says.
bystander_stop = threading.Event()
bystander = threading.Thread(target=bystander_stop.wait, daemon=True)
bystander.start()
real_replace, calls = os.replace, []
def replace(src, dst):
    real_replace(src, dst)
    calls.append(dst)
    if len(calls) == 1:  # the old output is hidden, the new one not yet in place
        signal.pthread_kill(bystander.ident, signal.SIGINT)
os.replace = replace
import shutil
real_rmtree, cleaned = shutil.rmtree, []
def rmtree(path, *args, **kwargs):
    real_rmtree(path, *args, **kwargs)
    if ".old-" in str(path):  # the hidden old output: its removal must not be cut short
        cleaned.append(path.name.split("-")[0])
shutil.rmtree = rmtree
try:
    with a.atomic_output_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
    print("no interrupt")
except KeyboardInterrupt:
    print("content", (final / "a.txt").read_text())
    print("left", sorted(p.name for p in final.parent.iterdir()))
    print(a.interrupted_message(final))
    print("cleaned", cleaned)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == "content new" and out[1] == "left ['out']", r.stdout
    assert "holds the complete new output" in out[2]
    assert out[3] == "cleaned ['.out.old']", r.stdout  # a deferred Ctrl-C lands after the clean-up
