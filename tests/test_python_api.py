"""The documented Python API: each stage package offers its entry function (imported on first
use, so the CLIs stay as light as they were), and README.md's "Python API" example, run here
call for call (same functions, same order, same keyword names) on the tiny fixtures against
the real Triton server. The README block is parsed from README.md, so the test fails when
the README drifts from the code."""
from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What each stage package offers, and the module that defines it.
API = {
    "ofaserve.compress": {"compress_model": "ofaserve.compress.pipeline", "CompressOptions": "ofaserve.compress.options",
                          "PROFILES": "ofaserve.compress.options", "DEFAULT_WIDTHS": "ofaserve.compress.options"},
    "ofaserve.export": {"export_subnet": "ofaserve.export.exporter", "ExportOptions": "ofaserve.export.exporter",
                        "run_export": "ofaserve.export.exporter", "ParityError": "ofaserve.export.parity",
                        "build_sub_model": "ofaserve.compress.submodel",
                        "load_sub_model": "ofaserve.compress.submodel"},
    "ofaserve.serve": {"build_repository": "ofaserve.serve.repository", "TritonServer": "ofaserve.serve.server",
                       "classify": "ofaserve.serve.client"},
}

# Where the entry functions live: what a CLI module must not import before it runs.
ENTRY_MODULES = ("ofaserve.compress.pipeline", "ofaserve.export.exporter", "ofaserve.serve.repository",
                 "ofaserve.serve.server", "ofaserve.serve.client")


def _readme_python_block() -> str:
    """The first ```python block under README.md's "## Python API" heading."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Python API' section"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.S | re.M)
    assert block, "README.md's Python API section has no ```python block"
    return block.group(1)


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """{name: module} of every ``from module import name`` in ``tree``."""
    return {a.asname or a.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            for a in node.names}


def _api_calls(tree: ast.AST, names: set[str]) -> list[tuple[str, int, tuple[str, ...]]]:
    """(function, positional argument count, keyword names) of every call of one of ``names``,
    in the order they appear in the source."""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id in names]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return [(c.func.id, len(c.args), tuple(k.arg for k in c.keywords)) for c in calls]


# ------------------------------------------------------------------------------ the packages
def test_each_stage_package_offers_its_entry_functions_and_its_cli_imports_none_of_them():
    """``import ofaserve.<stage>.cli`` does not import the modules of the entry functions
    (compress's CLI must set paddle's threads before paddle loads; serving starts light), and
    each name, once read, is the object its module defines."""
    defining = sorted(ENTRY_MODULES)
    code = ("import importlib, json, sys\n"
            "import ofaserve.compress.cli, ofaserve.export.cli, ofaserve.serve.cli\n"
            f"early = sorted(m for m in {defining!r} if m in sys.modules)\n"
            f"api = {API!r}\n"
            "same = {f'{p}.{n}': getattr(importlib.import_module(p), n) is getattr(importlib.import_module(m), n)\n"
            "        for p, names in api.items() for n, m in names.items()}\n"
            "alls = {p: sorted(importlib.import_module(p).__all__) for p in api}\n"
            "print(json.dumps([early, same, alls]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stderr[-2000:]
    early, same, alls = json.loads(r.stdout.strip().splitlines()[-1])
    assert early == [], f"imported by a CLI module before any name was read: {early}"
    assert all(same.values()), same
    assert alls == {p: sorted(names) for p, names in API.items()}


def test_each_stage_package_stub_types_the_same_names_from_the_same_modules():
    """The ``__init__.pyi`` a type checker reads names what ``__init__.py`` serves lazily,
    each from its defining module, and ships in the wheel's package data."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, names in API.items():
        folder = ROOT / package.split(".")[1]
        tree = ast.parse((folder / "__init__.pyi").read_text())
        typed = {a.asname or a.name: n.module for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        assert typed == names, package
        assert all(a.asname in (None, a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names)
        assert "__init__.pyi" in data.get(package, []), package


def test_an_unknown_name_is_an_attribute_error_and_submodules_still_import():
    import ofaserve.serve

    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        ofaserve.serve.no_such_name  # noqa: B018
    from ofaserve.export import int8  # a submodule, not one of the package's names
    assert int8.__name__ == "ofaserve.export.int8"


def test_every_entry_function_is_typed_and_says_what_it_returns_and_raises():
    from ofaserve.compress import compress_model
    from ofaserve.export import export_subnet
    from ofaserve.serve import TritonServer, build_repository, classify

    for fn in (compress_model, export_subnet, build_repository, classify, TritonServer.start):
        sig = inspect.signature(fn)
        untyped = [p for p in sig.parameters.values() if p.name != "self" and p.annotation is inspect.Parameter.empty]
        assert not untyped and sig.return_annotation is not inspect.Signature.empty, (fn.__qualname__, untyped)
        doc = inspect.getdoc(fn) or ""
        assert "OfaserveError" in doc and ("Returns" in doc or "returns" in doc), fn.__qualname__
    for fn in (compress_model, export_subnet, build_repository):
        doc = inspect.getdoc(fn)
        assert "Reads:" in doc and "Writes:" in doc, fn.__qualname__


# ------------------------------------------------------------------------------ the README example
def test_every_name_the_readme_python_example_imports_exists():
    import importlib

    names = _imported_names(ast.parse(_readme_python_block()))
    assert names, "the README's Python example imports nothing"
    missing = [f"{m}.{n}" for n, m in names.items() if not hasattr(importlib.import_module(m), n)]
    assert not missing, missing


def test_the_readme_example_and_this_test_make_the_same_calls():
    """Same API functions, in the same order, with the same positional count and keyword
    names: what the test below runs is what the README shows."""
    readme = ast.parse(_readme_python_block())
    api = set(_imported_names(readme))
    here = ast.parse(textwrap.dedent(inspect.getsource(test_the_readme_python_example_runs_end_to_end)))
    assert _api_calls(readme, api) == _api_calls(here, api)
    assert {n for n, _, _ in _api_calls(readme, api)} == api, "the example imports a name it never calls"


@pytest.mark.slow
@pytest.mark.integration
def test_the_readme_python_example_runs_end_to_end(tmp_path):
    """README.md's example on a tiny BERT and tiny MRPC files in GLUE's layout: compress ->
    export of two widths -> repository -> the real server -> one sentence pair classified."""
    from ofaserve.compress import CompressOptions, compress_model
    from ofaserve.export import export_subnet
    from ofaserve.serve import TritonServer, build_repository, classify
    from ofaserve.core.tasks import load_task
    from ofaserve.serve.server import free_port
    from ofaserve.testing import TINY_WIDTHS, write_glue_task, write_tiny_hf_checkpoint

    glue_mrpc = write_glue_task(tmp_path / "MRPC", "mrpc")
    train = load_task("mrpc", data_dir=str(glue_mrpc)).split("train")
    tiny_bert = write_tiny_hf_checkpoint(tmp_path / "bert", train.texts + train.text_pairs)

    compressed = compress_model(CompressOptions(
        output_dir=str(tmp_path / "compress"), task_name="MRPC", data_dir=str(glue_mrpc),
        model_name_or_path=str(tiny_bert), max_seq_length=128, num_train_epochs=1,
        width_mult_list=TINY_WIDTHS))
    assert "f1" in compressed.results_table().lower()

    exports = {w: tmp_path / "export" / f"w{w}" for w in ("1.0", "0.75")}
    for width, folder in exports.items():
        exported = export_subnet(tmp_path / "compress", folder, width, max_seq_length=128)
        assert exported.summary_line() and exported.spec.pair

    repo = build_repository(list(exports.values()), tmp_path / "repo", precision="fp32")
    compressed_model = min(repo.models, key=lambda m: repo.models[m].width_mult)
    assert compressed_model == "bert_w75" and set(repo.models) == {"bert_w100", "bert_w75"}

    with TritonServer(tmp_path / "repo", grpc_port=free_port(), http_port=free_port(),
                      metrics_port=free_port()) as server:
        answers = classify(["The company said profits rose."], text_pairs=["Profits went up, the firm said."],
                           url=server.grpc_url, model=compressed_model)
    (answer,) = answers
    assert answer["label"] in ("0", "1") and set(answer["probs"]) == {"0", "1"}
    assert abs(sum(answer["probs"].values()) - 1) < 1e-5
