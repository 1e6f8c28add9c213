"""Run the Triton Inference Server bundled in the nvidia-pytriton wheel.

The wheel ships a real `tritonserver` (2.51, python backend only) but no launcher we
can use directly, so this does what pytriton does: copy bin/,
backends/ and caches/ into a work dir, drop the python backend stub for this Python
into backends/python/, and start the binary with libtritonserver.so (renamed, in
nvidia_pytriton.libs) and this venv's libpython on LD_LIBRARY_PATH and the venv's bin
first on PATH (the stub finds its Python home, and so numpy, through `python3`).

Like pytriton's launcher, every start puts Triton's admin APIs behind a key made for that
launch (``--grpc-restricted-protocol`` / ``--http-restricted-api``): shared memory, the
model repository, trace and logging. Shared-memory registration is the way into
python-backend models that NVIDIA's August 2025 bulletin describes for Triton releases
before 25.07, this one (2.51) included. What ofaserve's clients call stays open:
inference, health, metadata, model config and statistics (the benchmark reads them; the
metrics port publishes the same counters without any key). The key reaches this user's
own clients without being typed: it is written to a private file (folder 0700, file
0600) named by the gRPC port, which ``admin_headers(url)`` reads.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from ofaserve.core.errors import OfaserveError
from ofaserve.serve.addresses import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

# Printed by every start on a machine without a CUDA driver; not an error for us.
_HARMLESS = ("CudaDriverHelper", "cuda driver", "CUDA driver")

# Triton's API groups (tritonserver --help: health, metadata, inference, shared-memory,
# model-config, model-repository, statistics, trace, logging) that need the launch's key.
RESTRICTED_APIS = ("shared-memory", "model-repository", "trace", "logging")
# pytriton's header name, so its clients' access_token works too. Triton checks it as is
# on HTTP and prefixed with "triton-grpc-protocol-" on gRPC (HTTP/2 headers are lowercase).
KEY_HEADER = "triton-access-token"
GRPC_KEY_HEADER = f"triton-grpc-protocol-{KEY_HEADER}"
# The key of a server started elsewhere (e.g. the Kubernetes Secret of serve/deploy/).
KEY_ENV = "OFASERVE_TRITON_KEY"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def restriction_flags(key: str) -> list[str]:
    """The server flags that put RESTRICTED_APIS behind ``key`` on gRPC and HTTP."""
    value = f"{','.join(RESTRICTED_APIS)}:{KEY_HEADER}={key}"
    return [f"--grpc-restricted-protocol={value}", f"--http-restricted-api={value}"]


def key_dir() -> Path:
    """This user's private folder for the keys of the servers it runs (created 0700).

    In the shared temp folder another user could have made it first: a folder that is not
    ours, not a real folder or open to others is refused rather than used."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = Path(base) / f"ofaserve-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OfaserveError(f"{folder} should be a folder only this user can read (owner uid {st.st_uid}, "
                            f"mode {stat.filemode(st.st_mode)}): remove it and start again")
    return folder


def key_path(grpc_port: int) -> Path:
    return key_dir() / f"triton-grpc-{int(grpc_port)}.key"


def admin_headers(url: str) -> dict[str, str]:
    """gRPC headers that unlock the restricted APIs of the server at ``url`` ("host:port"):
    the key in $OFASERVE_TRITON_KEY, else, for a loopback address, the key file of the
    server this user started on that port; {} when there is neither."""
    if os.environ.get(KEY_ENV):
        return {GRPC_KEY_HEADER: os.environ[KEY_ENV]}
    parts = urlsplit(url if "//" in url else f"//{url}")
    if parts.hostname not in _LOOPBACK or parts.port is None:
        return {}
    with contextlib.suppress(OSError, OfaserveError):
        return {GRPC_KEY_HEADER: key_path(parts.port).read_text().strip()}
    return {}


def _site_packages_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise OfaserveError(f"{package} is not installed: pip install nvidia-pytriton==0.7.0")
    return Path(list(spec.submodule_search_locations)[0])


def find_triton() -> tuple[Path, Path]:
    """(pytriton's tritonserver folder, the folder holding libtritonserver.so and friends)."""
    root = _site_packages_dir("pytriton") / "tritonserver"
    libs = root.parent.parent / "nvidia_pytriton.libs"
    if not (root / "bin" / "tritonserver").is_file() or not libs.is_dir():
        raise OfaserveError(f"no bundled tritonserver under {root}: reinstall nvidia-pytriton==0.7.0")
    return root, libs


def _die_with_parent() -> None:
    """prctl(PR_SET_PDEATHSIG, SIGTERM) in the child (Linux); a no-op elsewhere."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _error_lines(log: str, limit: int = 8) -> list[str]:
    """The server's own error lines (glog `E...` lines and `error:` messages)."""
    lines = [l.strip() for l in log.splitlines()
             if (l[:1] == "E" and l[1:5].isdigit()) or "error:" in l.lower() or "failed to load" in l.lower()
             or "UNAVAILABLE" in l]
    return [l for l in lines if not any(h in l for h in _HARMLESS)][-limit:]


def _first_reason(e: OSError) -> str:
    """One line for an OSError; shutil.Error carries a list of (src, dst, reason) instead."""
    if isinstance(e, shutil.Error) and e.args and isinstance(e.args[0], list) and e.args[0]:
        first = e.args[0][0]
        more = len(e.args[0]) - 1
        return f"{first[-1]}" + (f" (and {more} more files)" if more else "")
    return e.strerror or str(e)


class TritonServer:
    """The bundled Triton server on one model repository, as a managed child process (what
    ``ofaserve serve`` runs).

    ``with TritonServer(repo, grpc_port=...) as server:`` starts it (``start``) and stops it on
    leaving the block (``stop``); ``server.grpc_url`` is what ``classify`` and tritonclient
    connect to. It binds ``host`` (default 127.0.0.1) and puts Triton's admin APIs behind a key
    made for this launch (``admin_headers``, and a key file for this user's own clients).
    Reads: ``model_repository`` (an ``ofaserve repo`` output, or any repository of models the
    bundled server can load). Writes: a work folder in the temp folder (the server's binaries
    and log) and the key file, both removed by ``stop``.
    """

    def __init__(self, model_repository: str | os.PathLike, *, host: str = DEFAULT_HOST,
                 grpc_port: int = DEFAULT_GRPC_PORT, http_port: int = DEFAULT_HTTP_PORT,
                 metrics_port: int = DEFAULT_METRICS_PORT,
                 log_verbose: int = 0, extra_backends: tuple[str | os.PathLike, ...] = ()) -> None:
        """``extra_backends``: folders ``<name>/libtriton_<name>.so`` (plus the libraries it
        loads) served next to the bundled python backend, e.g. a native Triton backend
        built for this server's version (2.51) from NVIDIA's backend sources."""
        self.model_repository = Path(model_repository).resolve()
        self.extra_backends = [Path(b).resolve() for b in extra_backends]
        for backend in self.extra_backends:
            if not (backend / f"libtriton_{backend.name}.so").is_file():
                raise OfaserveError(f"{backend} holds no libtriton_{backend.name}.so: build that backend first")
        self.host = host
        self.ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self._client = None
        self._shm: set[str] = set()
        self._children: set[int] = set()
        self._stubs_at_start: dict[str, int] = {}
        self.key: str | None = None
        self.key_path: Path | None = None

    # -- endpoints -------------------------------------------------------------------
    @property
    def grpc_url(self) -> str:
        return f"{self._connect_host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://{self._connect_host}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._connect_host}:{self.ports['metrics']}/metrics"

    @property
    def _connect_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def admin_headers(self) -> dict[str, str]:
        """gRPC headers that unlock this launch's restricted APIs (RESTRICTED_APIS)."""
        if self.key is None:
            raise OfaserveError("server not started: it has no key yet")
        return {GRPC_KEY_HEADER: self.key}

    # -- lifecycle -------------------------------------------------------------------
    def _prepare_workdir(self) -> list[str]:
        root, libs = find_triton()
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / py / "triton_python_backend_stub"
        if not stub.is_file():
            raise OfaserveError(f"nvidia-pytriton ships no python backend stub for Python {py}")
        self.workdir = Path(tempfile.mkdtemp(prefix="ofaserve-triton-"))
        for sub in ("bin", "backends", "caches"):
            shutil.copytree(root / sub, self.workdir / sub, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, self.workdir / "backends" / "python" / stub.name)
        for backend in self.extra_backends:
            shutil.copytree(backend, self.workdir / "backends" / backend.name, symlinks=True)
        self._env_libs = [sysconfig.get_config_var("LIBDIR") or "", str(libs)]
        args = [str(self.workdir / "bin" / "tritonserver"),
                f"--model-repository={self.model_repository}",
                f"--backend-directory={self.workdir / 'backends'}",
                f"--cache-directory={self.workdir / 'caches'}",
                "--model-control-mode=none", "--strict-readiness=true", "--exit-on-error=true",
                "--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false",
                f"--log-verbose={int(self.log_verbose)}", *restriction_flags(self.key)]
        for proto, port in self.ports.items():
            args += [f"--{proto}-address={self.host}" if proto != "http" else f"--http-address={self.host}",
                     f"--{proto}-port={port}"]
        return args

    def _write_key(self) -> None:
        """A new key for this launch, in this user's key folder (0600, written whole, then
        renamed into place so a client never reads half of it)."""
        self.key = secrets.token_urlsafe(32)
        path = key_path(self.ports["grpc"])
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.key + "\n")
        os.replace(tmp, path)
        self.key_path = path

    def _remove_key(self) -> None:
        """Delete the key file if it still holds this launch's key."""
        if self.key_path is not None:
            with contextlib.suppress(OSError):
                if self.key_path.read_text().strip() == self.key:
                    self.key_path.unlink()
            self.key_path = None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            [p for p in self._env_libs + [env.get("LD_LIBRARY_PATH", "")] if p])
        env.pop("PYTHONHOME", None)
        return env

    def start(self, timeout: float = 120) -> "TritonServer":
        """Start the server and wait until it and every model of the repository are ready;
        returns ``self``. Raises ``OfaserveError`` (one line quoting the server's own error
        lines) when the repository holds no models, a port is in use, the key file cannot be
        written, the server exits or a model fails to load, or it is not ready within
        ``timeout`` seconds; nothing is left running then."""
        if self.process is not None:
            raise OfaserveError("server already started")
        if not self.model_repository.is_dir():
            raise OfaserveError(f"model repository {self.model_repository} does not exist")
        if not any(p.is_dir() and (p / "config.pbtxt").is_file() for p in self.model_repository.iterdir()):
            raise OfaserveError(f"{self.model_repository} holds no models (no */config.pbtxt): run `ofaserve repo`")
        for proto, port in self.ports.items():
            if port_in_use(self.host, port):
                raise OfaserveError(f"{proto} port {port} on {self.host} is already in use: "
                                    f"stop what holds it or pass --{proto}_port")
        try:
            self._write_key()
        except OSError as e:
            raise OfaserveError(f"cannot write the server's key file: {e}") from e
        try:
            try:
                args = self._prepare_workdir()
            except OSError as e:  # shutil.Error too: a full or read-only temp folder
                raise OfaserveError(f"cannot copy the Triton server into a working folder under "
                                    f"{tempfile.gettempdir()}: {_first_reason(e)} (free space there, or point "
                                    "TMPDIR at a folder with room)") from e
            self.log_path = self.workdir / "tritonserver.log"
            with open(self.log_path, "wb") as log:
                # Own session: stop() can signal the server and every stub it spawned at once.
                # Parent-death signal: if this process is SIGKILLed (OOM killer, kill -9), the
                # kernel sends Triton SIGTERM, so it shuts down and frees ports, stubs and /dev/shm.
                self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=self._environment(), cwd=self.workdir, start_new_session=True,
                                                preexec_fn=_die_with_parent)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self._remember_resources()
        self._stubs_at_start = self.stub_counts()
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.exit_error()
            if self.is_ready() and all(self.models_ready().values()) and self._http_endpoints_up():
                return
            time.sleep(0.2)
        raise OfaserveError(self.failure_message(f"tritonserver not ready after {timeout:.0f} s"))

    def _http_endpoints_up(self) -> bool:
        """Triton binds HTTP and metrics after gRPC: if one of those ports was taken
        after our check, it exits a second later. Ready means all three answer."""
        import urllib.request
        for url in (f"{self.http_url}/v2/health/ready", self.metrics_url):
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status != 200:
                        return False
            except OSError:
                return False
        return True

    def exit_error(self) -> OfaserveError:
        """The error for a server process that has exited: its code, the signal that
        killed it if any, and its own last error lines."""
        code = self.process.returncode
        what = f"tritonserver exited with code {code}"
        if code is not None and code < 0:
            with contextlib.suppress(ValueError):
                what += f" (killed by {signal.Signals(-code).name})"
        return OfaserveError(self.failure_message(what))

    def check_health(self, grace_s: float = 1.0) -> None:
        """Raise OfaserveError if the server exited or a model is no longer ready.

        A killed server takes its stubs down with it (PR_SET_PDEATHSIG), and the stubs
        can be seen gone before the server is: when models are down, the server gets
        ``grace_s`` to be seen exiting, so the error names the real cause."""
        if not self.is_running():
            raise self.exit_error()
        down = [m for m, ok in self.models_ready().items() if not ok]
        if not down:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace_s)
        if not self.is_running():
            raise self.exit_error()
        raise OfaserveError(f"model(s) no longer ready: {', '.join(down)} (a python backend stub process died; "
                            "Triton 2.51 does not restart it): restart `ofaserve serve`")

    def failure_message(self, what: str) -> str:
        """``what`` plus the server's own error lines from its log, as one line."""
        log = self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""
        errors = _error_lines(log)
        if not errors:  # last meaningful lines: not the options table, not "Started ..." banners
            errors = [l for l in log.strip().splitlines()
                      if l.strip() and l.lstrip()[:1] not in "+|" and "Started" not in l
                      and not any(h in l for h in _HARMLESS)][-3:]
        return f"{what}: " + (" | ".join(errors) if errors else "no output")

    def _remember_resources(self) -> None:
        """Note our stub processes and shared-memory segments so stop() can clean up
        anything a crash would leave, without touching other servers' segments."""
        with contextlib.suppress(Exception):
            import psutil
            proc = psutil.Process(self.process.pid)
            procs = [proc] + proc.children(recursive=True)
            self._children = {p.pid for p in procs[1:]}
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    self._shm |= {m.path for m in p.memory_maps() if m.path.startswith("/dev/shm/")}

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; removes stubs, segments and the work dir."""
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        code = None
        if self.process is not None:
            self._remember_resources()
            if self.process.poll() is None:
                # Triton cannot unload a python model whose stub died and hangs on exit:
                # then give SIGTERM only a moment before SIGKILL.
                stubs = self.stub_counts()
                if any(stubs.get(m, 0) < n for m, n in self._stubs_at_start.items()):
                    timeout = min(timeout, 3)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait(5)
            code = self.process.returncode
            self._reap_children()
            self.process = None
        for path in self._shm:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._shm.clear()
        self._remove_key()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return code

    def _reap_children(self) -> None:
        """Stubs left behind (server killed hard) get SIGKILL; they live in our session."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, 0)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                os.killpg(self.process.pid, 0)  # raises once the group is empty
                time.sleep(0.1)
            os.killpg(self.process.pid, signal.SIGKILL)
        for pid in self._children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    # -- health ----------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            import tritonclient.grpc as grpcclient
            self._client = grpcclient.InferenceServerClient(self.grpc_url)
        return self._client

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        if not self.is_running():
            return False
        try:
            return bool(self.client.is_server_ready())
        except Exception:
            return False

    def stub_counts(self) -> dict[str, int]:
        """Live python-backend stub processes per model (a stub's argv[1] is its model.py)."""
        import psutil
        counts: dict[str, int] = {}
        if not self.is_running():
            return counts
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    argv = child.cmdline()
                    if (len(argv) > 1 and argv[0].endswith("triton_python_backend_stub")
                            and child.status() != psutil.STATUS_ZOMBIE):
                        model = Path(argv[1]).parent.parent.name
                        counts[model] = counts.get(model, 0) + 1
        return counts

    def models_ready(self) -> dict[str, bool]:
        """Readiness of every model in the repository, one by one.

        Triton 2.51 keeps reporting a python model READY (and the server healthy) after
        its stub process died, while every request to it fails with "Stub process is not
        healthy". So a python model also needs as many live stubs as it had at start, and
        an ensemble needs every model it composes."""
        configs = self._configs()
        stubs = self.stub_counts() if self._stubs_at_start else {}
        ready = {}
        for name in configs:
            try:
                ready[name] = self.is_running() and bool(self.client.is_model_ready(name))
            except Exception:
                ready[name] = False
            if ready[name] and stubs.get(name, 0) < self._stubs_at_start.get(name, 0):
                ready[name] = False
        for name, config in configs.items():
            steps = [s.model_name for s in config.ensemble_scheduling.step]
            if steps and not all(ready.get(s, False) for s in steps):
                ready[name] = False
        return ready

    def _configs(self) -> dict:
        if getattr(self, "_config_cache", None) is None:
            from google.protobuf import text_format
            from tritonclient.grpc import model_config_pb2 as mc
            configs = {}
            for p in sorted(self.model_repository.iterdir()):
                if p.is_dir() and (p / "config.pbtxt").is_file():
                    config = mc.ModelConfig()
                    with contextlib.suppress(Exception):
                        text_format.Parse((p / "config.pbtxt").read_text(), config)
                    configs[p.name] = config
            self._config_cache = configs
        return self._config_cache

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort: never leave a server behind an exception
        with contextlib.suppress(Exception):
            if self.process is not None and self.process.poll() is None:
                self.stop(timeout=5)
