"""The installed distribution: one import name, and a serving side that needs no training stack."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAINING_STACK = ("paddle", "paddleslim", "paddlenlp", "paddle2onnx", "nncf")


def _source_copy(dest: Path) -> Path:
    """The files git tracks or would track (what a clean clone plus this change holds): a
    build inside the checkout would reuse its stale build/ folder."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.mark.slow
def test_wheel_has_one_top_level_import_name(tmp_path):
    src = _source_copy(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("ofaserve-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert z.read(top_level).decode().split() == ["ofaserve"]
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"ofaserve"}
    # the stages, the runtime copied into repositories and the Triton model sources are all in it
    for path in ("ofaserve/compress/pipeline.py", "ofaserve/export/exporter.py", "ofaserve/serve/repository.py",
                 "ofaserve/benchmarks/run.py", "ofaserve/runtime/runtimes.py", "ofaserve/core/manifests.py",
                 "ofaserve/serve/triton_models/encoder/model.py", "ofaserve/serve/triton_models/python_model_io.py"):
        assert path in names, path
    assert not [n for n in names if "/results/" in n or n.startswith("ofaserve/tests")]
    # the record-makers behind benchmarks/results/ run from a checkout; the wheel ships the product
    assert not [n for n in names if "/records/" in n]
    assert "ofaserve/benchmarks/reliability/cli.py" in names


def test_serving_commands_import_no_training_stack():
    """`ofaserve repo/serve/classify/bench` must run where only the serving install is."""
    code = ("import sys, json\n"
            "import ofaserve.cli, ofaserve.serve.cli, ofaserve.serve.repository, ofaserve.serve.server, "
            "ofaserve.serve.client, ofaserve.benchmarks.run, ofaserve.benchmarks.reliability\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {TRAINING_STACK!r})))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_package_imports_do_no_work():
    """Importing a stage's modules must not configure the process (threads, signals)."""
    code = ("import os\n"
            "before = dict(os.environ)\n"
            "import ofaserve.compress.cli, ofaserve.export.cli, ofaserve.demo\n"
            "changed = sorted(k for k in os.environ if before.get(k) != os.environ[k])\n"
            "print(changed)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_training_commands_say_what_to_install_where_paddle_is_missing(tmp_path):
    """A serving-only install runs `ofaserve compress` to a one-line error, not a traceback."""
    blocker = tmp_path / "sitecustomize.py"  # makes `import paddle` fail in the child only
    blocker.write_text("import sys\n"
                       "class _Block:\n"
                       "    def find_spec(self, name, path=None, target=None):\n"
                       "        if name.split('.')[0] == 'paddle':\n"
                       "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
                       "sys.meta_path.insert(0, _Block())\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "ofaserve", "compress", "--output_dir", str(tmp_path / "c")],
                       capture_output=True, text=True, timeout=300, cwd="/", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "pip install 'ofaserve[train]'" in r.stderr and "Traceback" not in r.stderr
