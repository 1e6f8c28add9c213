"""Shared fixtures: a tiny random-weight BERT run through the REAL compress (and export)
code, so every later stage is tested on genuine artifacts in seconds."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from ofaserve.testing import TINY_WIDTHS  # noqa: E402,F401  (tests import it from here)

# The tiny export serves sentences up to 128 tokens, as the product's exports do, so the
# packed encoder's 128-wide rows and max-length sentences run in the tests.
TINY_MAX_SEQ_LENGTH = 128

# Property tests: in CI (the default) each runs its fixed example count from a fixed seed
# (derandomize), so a run is reproducible; by hand, OFASERVE_HYPOTHESIS_EXAMPLES=N runs N
# random examples per property test.
HYPOTHESIS_EXAMPLES_ENV = "OFASERVE_HYPOTHESIS_EXAMPLES"
_COMMON = dict(deadline=None, print_blob=True, database=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("by_hand", derandomize=False, **_COMMON)
settings.load_profile("by_hand" if os.environ.get(HYPOTHESIS_EXAMPLES_ENV) else "ci")


# By hand, OFASERVE_TEST_CPU=avx2 (or another ``capabilities.PROFILES`` name) runs the whole
# suite as if this CPU had that profile's capabilities, so every in-process decision takes
# that CPU's branch in every test, not only in the ``simulated_cpu`` ones. Runners still run
# on the real CPU, and product subprocesses (CLI runs, servers) detect the real one. Do not
# add oneDNN's ISA cap to it: under ONEDNN_MAX_CPU_ISA=AVX2 OpenVINO still reports BF16 on a
# bf16 CPU but cannot build bf16 kernels, so the tests that run bf16 for real fail there.
SIMULATED_CPU_ENV = "OFASERVE_TEST_CPU"


def pytest_configure(config):
    name = os.environ.get(SIMULATED_CPU_ENV)
    if name:
        from ofaserve.runtime import capabilities

        if name not in capabilities.PROFILES:
            raise pytest.UsageError(f"{SIMULATED_CPU_ENV}={name}: not one of {', '.join(capabilities.PROFILES)}")
        sim, real = capabilities.PROFILES[name], capabilities.detect()
        beyond = sorted((sim.flags - real.flags) | (set(sim.openvino) - set(real.openvino)))
        if beyond:  # the tests run what the product decides: it would run kernels this CPU lacks
            raise pytest.UsageError(f"{SIMULATED_CPU_ENV}={name}: this CPU lacks {', '.join(beyond)}; simulate "
                                    "only a CPU with fewer capabilities than this one")


def pytest_report_header(config):
    name = os.environ.get(SIMULATED_CPU_ENV)
    return f"in-process CPU capabilities simulated: {name} ({SIMULATED_CPU_ENV})" if name else None


@pytest.fixture(autouse=True, scope="session")
def whole_run_simulated_cpu():
    name = os.environ.get(SIMULATED_CPU_ENV)
    if not name:
        yield None
        return
    from ofaserve.runtime import capabilities

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(capabilities, "current", lambda: capabilities.PROFILES[name])
        yield capabilities.PROFILES[name]


def examples(ci: int) -> int:
    """How many examples a property test runs: ``ci`` by default, or the count set by hand."""
    return int(os.environ.get(HYPOTHESIS_EXAMPLES_ENV) or ci)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(hf_checkpoint_dir, train_csv, dev_csv) for a 2-layer, 64-wide, 4-head BERT."""
    from ofaserve.testing import tiny_task_files, write_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    train, dev, texts = tiny_task_files(root / "data")
    ckpt = write_tiny_hf_checkpoint(root / "hf", texts)
    return ckpt, train, dev


@pytest.fixture(scope="session")
def tiny_compress_dir(tiny_checkpoint, tmp_path_factory):
    """Output of the real `compress_model` on the tiny checkpoint (widths 1.0/0.75/0.5)."""
    from ofaserve.compress.pipeline import compress_model
    from ofaserve.testing import tiny_compress_options

    out = tmp_path_factory.mktemp("compress") / "out"
    compress_model(tiny_compress_options(*tiny_checkpoint, out))
    return out


@pytest.fixture(scope="session")
def tiny_export_dir(tiny_compress_dir, tmp_path_factory):
    """Output of the real `export_subnet` at width 0.75 on ``tiny_compress_dir``, serving up
    to ``TINY_MAX_SEQ_LENGTH`` tokens (manifest, sub_model/, static/, onnx/ incl.
    fused/packed/fp16/int8 variants, tokenizer/)."""
    from ofaserve.export import export_subnet

    out = tmp_path_factory.mktemp("export") / "w075"
    export_subnet(str(tiny_compress_dir), str(out), 0.75, max_seq_length=TINY_MAX_SEQ_LENGTH, progress=False)
    return out


# A tiny supernet over widths and depths: 4 layers, so depth 0.5 keeps layers 0 and 2 (DynaBERT's
# rule) and a wrong layer choice cannot pass for the right one.
TINY_DEPTH_LAYERS = 4
TINY_DEPTH_WIDTHS = [1.0, 0.5]
TINY_DEPTHS = [1.0, 0.5]


@pytest.fixture(scope="session")
def tiny_depth_compress_dir(tmp_path_factory):
    """The real `compress_model` on a 4-layer tiny checkpoint, widths 1.0/0.5 x depths 1.0/0.5."""
    import dataclasses

    from ofaserve.compress.pipeline import compress_model
    from ofaserve.testing import tiny_compress_options, tiny_task_files, write_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("depth")
    train, dev, texts = tiny_task_files(root / "data")
    ckpt = write_tiny_hf_checkpoint(root / "hf", texts, layers=TINY_DEPTH_LAYERS)
    opts = dataclasses.replace(tiny_compress_options(ckpt, train, dev, root / "compress"),
                               width_mult_list=TINY_DEPTH_WIDTHS, depth_mult_list=TINY_DEPTHS)
    compress_model(opts)
    return root / "compress"


def _tiny_task_compress(tmp_path_factory, kind: str):
    import dataclasses

    from ofaserve.compress.pipeline import compress_model
    from ofaserve.testing import tiny_compress_options, tiny_pair_task_files, write_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp(kind)
    train, dev, texts = tiny_pair_task_files(root / "data", regression=kind == "regression")
    ckpt = write_tiny_hf_checkpoint(root / "hf", texts)
    opts = tiny_compress_options(ckpt, train, dev, root / "compress")
    if kind == "regression":
        opts = dataclasses.replace(opts, task_type="regression")
    compress_model(opts)
    return root / "compress"


@pytest.fixture(scope="session")
def tiny_pair_compress_dir(tmp_path_factory):
    """The real compress on a tiny sentence-pair classification CSV (text, text_pair, label)."""
    return _tiny_task_compress(tmp_path_factory, "pair")


@pytest.fixture(scope="session")
def tiny_regression_compress_dir(tmp_path_factory):
    """The real compress on a tiny sentence-pair regression CSV (scores 0-5, --task_type regression)."""
    return _tiny_task_compress(tmp_path_factory, "regression")


@pytest.fixture(scope="session")
def tiny_pair_export_dir(tiny_pair_compress_dir, tmp_path_factory):
    from ofaserve.export import export_subnet

    out = tmp_path_factory.mktemp("export_pair") / "w075"
    export_subnet(str(tiny_pair_compress_dir), str(out), 0.75, max_seq_length=TINY_MAX_SEQ_LENGTH, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_regression_export_dir(tiny_regression_compress_dir, tmp_path_factory):
    from ofaserve.export import export_subnet

    out = tmp_path_factory.mktemp("export_regression") / "w075"
    export_subnet(str(tiny_regression_compress_dir), str(out), 0.75, max_seq_length=TINY_MAX_SEQ_LENGTH,
                  progress=False)
    return out


@pytest.fixture
def precision_inputs(tiny_compress_dir, tiny_export_dir, tmp_path):
    """What ``precision_variants`` takes, for a copy of the tiny export without its INT8 IRs:
    folder, dev split, tokenizer, task, FP32 dev logits and accuracy (ONNX Runtime), train split."""
    import shutil
    from types import SimpleNamespace

    from ofaserve.export import parity, source
    from ofaserve.export.artifact_logits import onnxruntime

    folder = tmp_path / "exp"
    shutil.copytree(tiny_export_dir, folder)
    shutil.rmtree(folder / "openvino", ignore_errors=True)
    src = source.load_compress_output(tiny_compress_dir)
    dev = source.load_dev(src)
    tok, _ = source.load_tokenizer(src, src.manifest.max_seq_length)
    m, logits = parity.dev_eval(onnxruntime(folder / "onnx" / "model.onnx"), dev, tok, src.spec)
    return SimpleNamespace(folder=folder, dev=dev, tokenizer=tok, spec=src.spec, fp32_logits=logits,
                           fp32_accuracy=m["accuracy"], train=src.manifest.split("train"))


@pytest.fixture(params=["avx2", "avx512_bf16_vnni", "amx"])
def simulated_cpu(request, monkeypatch):
    """Every decision that reads ``capabilities.current()`` sees one of the CPUs this project
    meets (AVX2-only EPYC, AVX-512 + bf16 + VNNI EPYC, Xeon with AMX), whatever CPU runs the
    test. Runners still run on the real CPU: a test must not make one execute a precision
    this machine lacks."""
    from ofaserve.runtime import capabilities

    caps = capabilities.PROFILES[request.param]
    monkeypatch.setattr(capabilities, "current", lambda: caps)
    return caps


# A second process that holds ``core.outputs.output_lock`` on a path until the test ends.
_LOCK_HOLDER = """
import sys
from ofaserve.core.outputs import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def held_by_another_process():
    """``hold(out)`` starts a real second run holding the lock on ``out`` (a stage running
    elsewhere); it lets go when its stdin closes, at the latest when the test ends."""
    import subprocess
    import sys

    procs = []

    def hold(out):
        p = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        if p.stdin and not p.stdin.closed:
            p.stdin.close()
        p.wait(30)
