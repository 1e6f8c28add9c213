"""The READMEs name only files the repository has: every Python file a Markdown file
mentions in backticks, every Markdown file it links, and every bare NAME.md it names
(DESIGN.md, README.md) is a tracked file (matched by the end of its path)."""
from __future__ import annotations

import fnmatch
import posixpath
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Names the READMEs mention that are not this repository's files, and what they are.
ELSEWHERE = {
    "run_glue_ofa.py": "PaddleNLP's OFA tutorial script, whose recipe compress follows",
    "export_model.py": "PaddleNLP's OFA tutorial export script, whose flags export follows",
    "check.py": "the liveness script inside serve/deploy/triton.yaml's ConfigMap",
}
MENTION = re.compile(r"`([^`\s]+\.py)`|\]\(([^)\s#]+\.md)\)|(?<![\w/.`-])([A-Z][A-Z_]+\.md)\b")


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist: the files on disk
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".venv" not in p.parts]
    return out.split()


def test_readmes_name_only_files_in_the_repository():
    tracked = _tracked()
    missing = []
    for md in (t for t in tracked if t.endswith(".md")):
        for m in MENTION.finditer((ROOT / md).read_text()):
            name = next(g for g in m.groups() if g).removeprefix("./")
            if m.group(2) and name.startswith("../"):  # a relative link: the file it reaches
                name = posixpath.normpath(posixpath.join(posixpath.dirname(md), name))
            if name in ELSEWHERE or name.startswith(("http:", "https:")):
                continue
            if not any(fnmatch.fnmatch(t, name) or fnmatch.fnmatch(t, f"*/{name}") for t in tracked):
                missing.append(f"{md}: {name}")
    assert not missing, missing
