"""Product comments, docstrings and the READMEs say why and what, never when: no date, no
commit id. History lives in benchmarks/results/ (its index and history/), where each record
carries its command, date and machine. Only comments and docstrings are read, so a hash that
is data (a sha256 in a lock, a constant in code) is never taken for a commit id."""
from __future__ import annotations

import ast
import io
import re
import subprocess
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The product: what the wheel ships, and the python models copied into repositories. The
# record makers (benchmarks/records/) and the records themselves carry dates by design.
PRODUCT = ("compress/", "export/", "serve/", "ofaserve/", "benchmarks/")
NOT_PRODUCT = ("benchmarks/records/", "benchmarks/results/")
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
# "commit 889c84d", "at 889c84d", "(commit `3a7c322`)": 7 to 40 hex digits, at least one digit
# and one letter (a number such as "at 1048576" is not an id), next to "commit" or "at".
COMMIT_ID = re.compile(r"\b(?:commit|at)\b[\s:=`'\"(]*(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", re.I)
OUTSIDE = re.compile(r"\.\./shared|\bDESIGN\.md\b")


def _tracked(*, suffix: str) -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split() if f.endswith(suffix)]


def _product_files() -> list[str]:
    return [f for f in _tracked(suffix=".py") if f.startswith(PRODUCT) and not f.startswith(NOT_PRODUCT)]


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python source."""
    found = [(t.start[0], t.string) for t in tokenize.generate_tokens(io.StringIO(source).readline)
             if t.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found += [(node.body[0].lineno + i, line) for i, line in enumerate(doc.splitlines())]
    return found


def history_in(text: str) -> list[str]:
    return [m.group(0) for pattern in (DATE, COMMIT_ID) for m in pattern.finditer(text)]


def test_the_patterns_catch_history_and_spare_data():
    caught = prose('"""Made at 889c84d on 2026-11-26."""\nX = 1  # the run before, commit `3a7c322`\n'
                   'def f():\n    """Recorded in commit 5d45068."""\n')
    assert sorted(h for _, text in caught for h in history_in(text)) == [
        "2026-11-26", "at 889c84d", "commit 5d45068", "commit `3a7c322"]
    spared = prose('SHA = "3b83ef96387f14655fc854ddc3c6bd57"  # the md5 of the licence text, at 2048 bytes\n'
                   '"""Capped at 1048576 bytes (a shm region starts at 1 MiB)."""\n')
    assert spared and not [h for _, text in spared for h in history_in(text)]
    assert not history_in("a sha256 of 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")


@pytest.mark.parametrize("path", _product_files())
def test_product_comments_and_docstrings_carry_no_date_or_commit_id(path):
    found = [f"{path}:{line}: {hit}" for line, text in prose((ROOT / path).read_text()) for hit in history_in(text)]
    assert not found, found


def test_readmes_carry_no_date_or_commit_id_and_point_nowhere_outside_the_repository():
    """Every README but the records' own index (benchmarks/results/, which holds the history)."""
    found = []
    for md in _tracked(suffix=".md"):
        if md.startswith("benchmarks/results/"):
            continue
        text = (ROOT / md).read_text()
        found += [f"{md}: {hit}" for hit in history_in(text)]
        found += [f"{md}: points outside the repository: {m.group(0)}" for m in OUTSIDE.finditer(text)]
    assert not found, found
