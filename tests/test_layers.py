"""The package's layers, checked by import-linter against the contracts in pyproject.toml.

import-linter walks the root package's folder on disk; our stage folders are mapped into
``ofaserve`` by setuptools' package-dir, so the tree is first assembled the way a wheel
lays it out (the mapping is read from pyproject.toml, not repeated here).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def assemble_package(dest: Path) -> Path:
    """Copy the .py files of every package the wheel lists to ``dest/<dotted path>``, where
    the package-dir mapping installs them (folders the wheel does not ship, such as
    benchmarks/records, are left out, as in the wheel)."""
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    for package in setuptools["packages"]:
        mapped = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        folder = ROOT / mapping[mapped] / Path(*package[len(mapped) + 1:].split(".") if package != mapped else ())
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in folder.glob("*.py"):
            shutil.copy2(src, target / src.name)
    return dest


def lint_imports(staged: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"{LINT_IMPORTS} is missing: `make venv` installs import-linter (the test extra)")
    # cwd = the staged tree: import-linter puts the working directory first on sys.path
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(PYPROJECT)], cwd=staged,
                          capture_output=True, text=True, timeout=300)


def test_layer_contracts_hold(tmp_path):
    r = lint_imports(assemble_package(tmp_path))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


@pytest.mark.parametrize("importer,imported", [
    ("serve/server.py", "ofaserve.compress.pipeline"),  # serving never imports training
    ("export/exporter.py", "ofaserve.serve.repository"),  # export hands serving a folder, never code
])
def test_a_forbidden_import_breaks_the_contracts(tmp_path, importer, imported):
    """A forbidden import must fail the check, naming the import."""
    staged = assemble_package(tmp_path)
    module = staged / "ofaserve" / importer
    parent, name = imported.rsplit(".", 1)
    module.write_text(module.read_text() + f"\nfrom {parent} import {name}  # noqa\n")
    r = lint_imports(staged)
    assert r.returncode != 0
    assert f"ofaserve.{importer[:-3].replace('/', '.')} -> {imported}" in r.stdout


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "serve" / "triton_models").rglob("*.py"))
                         + [ROOT / "ofaserve" / "runtime" / "runtimes.py"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_files_copied_into_repositories_import_nothing_from_the_package(path):
    """Generated Triton repositories must run without ofaserve installed in the server."""
    assert not {m for m in _imported_modules(path) if m.split(".")[0] == "ofaserve"}
