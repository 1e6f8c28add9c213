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


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from the files git tracks."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (built,) = (tmp / "dist").glob("ofaserve-*.whl")
    return built


def _metadata(wheel: Path):
    from email.parser import Parser
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


@pytest.mark.slow
def test_wheel_ships_the_license_it_declares(wheel):
    """pyproject says Apache-2.0: the canonical text (apache.org/licenses/LICENSE-2.0.txt,
    whose md5 is the one below) ships in the wheel's dist-info."""
    import hashlib
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.md5(text).hexdigest() == "3b83ef96387f14655fc854ddc3c6bd57"
    with zipfile.ZipFile(wheel) as z:
        (licence,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert z.read(licence) == text
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "Apache-2.0" and meta.get_all("License-File") == ["LICENSE"]


ORT_MODULE_PROVIDERS = ("onnxruntime", "onnxruntime-gpu")  # both install the one `onnxruntime` module


def _resolved(wheel: Path, extras: set[str]) -> set[str]:
    """The distributions the wheel requires with ``extras`` (what pip resolves at the top
    level; neither ONNX Runtime build is required by anything else we install)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    out = set()
    for text in _metadata(wheel).get_all("Requires-Dist"):
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras | {""}):
            out.add(canonicalize_name(req.name))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("extras", [set(), {"cpu"}, {"gpu"}, {"train", "cpu"}, {"train", "gpu"}, {"test", "cpu"}])
def test_an_install_gets_at_most_one_onnx_runtime(wheel, extras):
    """[cpu] brings onnxruntime, [gpu] onnxruntime-gpu with TensorRT, the serving install
    neither; no extra on its own brings both."""
    got = _resolved(wheel, extras) & set(ORT_MODULE_PROVIDERS)
    want = {"cpu": {"onnxruntime"}, "gpu": {"onnxruntime-gpu"}}
    assert got == set().union(*(want.get(e, set()) for e in extras)), (extras, got)
    if "gpu" in extras:
        assert "tensorrt-cu13" in _resolved(wheel, extras)


@pytest.mark.slow
def test_wheel_has_one_top_level_import_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert z.read(top_level).decode().split() == ["ofaserve"]
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"ofaserve"}
    # the stages, the runtime copied into repositories and the Triton model sources are all in it
    for path in ("ofaserve/compress/pipeline.py", "ofaserve/export/exporter.py", "ofaserve/serve/repository.py",
                 "ofaserve/benchmarks/run.py", "ofaserve/runtime/runtimes.py", "ofaserve/core/manifests.py",
                 "ofaserve/serve/triton_models/encoder/model.py", "ofaserve/serve/triton_models/python_model_io.py",
                 "ofaserve/compress/__init__.pyi", "ofaserve/export/__init__.pyi", "ofaserve/serve/__init__.pyi"):
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
