"""`p2d serve ARTIFACT`: a real inference server (MLServer, from PyPI) speaking the KServe V2 /
Open Inference Protocol — Triton's — with the artifact's graph on the runtime named.

MLServer lives in its own environment (`.venv-serve`, made by scripts/bootstrap: its protobuf
pin clashes with onnx's) and loads prune2deploy/ship/mlserver_runtime.py as a custom runtime.
`Server` starts it on loopback with ports of its own, waits (bounded) until the model is
ready or failed to load, and stops it; `p2d serve` runs it in the foreground.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import UserError
from ..files import read_json
from .served_inputs import MAX_BODY_BYTES
from .verify import check_files, check_pin

REPO = Path(__file__).resolve().parents[2]
# mlserver_runtime.SESSIONS (not importable here: it needs MLServer)
RUNTIMES = ("onnxruntime", "openvino", "openvino-bf16", "deepsparse")
PRODUCTION = ("onnxruntime", "openvino", "openvino-bf16")  # DeepSparse: evaluation licence only
DEEPSPARSE_LICENCE = ("DeepSparse 1.8's Community License allows evaluation only, not production use: "
                      "serve on onnxruntime or openvino in production")
LOAD_FAILED = "Some of the models failed to load"
PORT_TAKEN = "address already in use"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a model name is a path segment and a URL one
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerError(UserError):
    """The server did not come up, or the model did not load (the reason from its log)."""


def serve_python(runtime: str = "onnxruntime") -> Path:
    """The Python of the serving environment: $P2D_SERVE_PYTHON, or .venv-serve at the repo root;
    for DeepSparse, its own environment (which bootstrap gives MLServer too)."""
    if runtime == "deepsparse":
        from ..runtimes.deepsparse import python

        py, hint = python(), ".venv-deepsparse"
    else:
        env = os.environ.get("P2D_SERVE_PYTHON")
        py, hint = (Path(env) if env else REPO / ".venv-serve" / "bin" / "python"), ".venv-serve"
    if not py or not py.is_file():
        raise UserError(f"no serving environment for {runtime} ({py}): run scripts/bootstrap (it makes {hint})")
    probe = subprocess.run([str(py), "-c", "import mlserver"], capture_output=True, timeout=120)
    if probe.returncode:
        raise UserError(f"{py} has no MLServer: run scripts/bootstrap")
    return py


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host if host not in ("0.0.0.0", "") else "127.0.0.1", 0))
        return s.getsockname()[1]


def log_dir() -> Path:
    """Where server logs stay after the server is gone: $XDG_STATE_HOME/prune2deploy/serve."""
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "prune2deploy" / "serve"


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise UserError(f"model name {name!r} is not allowed: letters, digits, '.', '_', '-' (at most 128, "
                        "not starting with '.' or '-')")
    return name


def check_artifact(artifact: Path, pin: str | None = None) -> dict:
    """The manifest of an intact artifact; one line (UserError) for anything else."""
    artifact = Path(artifact)
    if not (artifact / "manifest.json").is_file():
        raise UserError(f"{artifact}: not a p2d artifact (no manifest.json)")
    bad = check_pin(artifact, pin)
    if bad:
        raise UserError(f"{artifact}: refused to serve: {bad}")
    try:
        manifest = read_json(artifact / "manifest.json")
    except ValueError:
        raise UserError(f"{artifact}: manifest.json is not valid JSON") from None
    bad = check_files(artifact, manifest)
    if bad:
        raise UserError(f"{artifact}: refused to serve: {bad} (the manifest's sha256 differs)")
    return manifest


def default_runtime(manifest: dict) -> str:
    """The runtime the artifact was measured and packaged for where it is a production one that
    can serve it; else ONNX Runtime."""
    rt = (manifest.get("runtime") or {}).get("name")
    return rt if rt in PRODUCTION else "onnxruntime"


def write_settings(where: Path, artifact: Path, name: str, runtime: str, threads: int, host: str, ports: dict,
                   extra: dict | None = None) -> None:
    """MLServer's settings.json and <name>/model-settings.json in `where`."""
    settings = {
        "host": host,
        "http_port": ports["http"],
        "grpc_port": ports.get("grpc") or 0,  # off unless given (mlserver_main)
        "metrics_endpoint": "/metrics" if ports.get("metrics") else None,
        "metrics_port": ports.get("metrics") or 8082,
        "metrics_dir": str(where / ".metrics"),
        "parallel_workers": 0,  # inference in the server process: the runtime owns the threads
        "debug": False,
        "load_models_at_startup": True,
    }
    model = {
        "name": name,
        "implementation": "prune2deploy.ship.mlserver_runtime.P2DModel",
        "parameters": {"uri": str(Path(artifact).resolve()),
                       "extra": {"runtime": runtime, "threads": threads, **(extra or {})}},
    }
    (where / name).mkdir(parents=True, exist_ok=True)
    (where / "settings.json").write_text(json.dumps(settings, indent=2))
    (where / name / "model-settings.json").write_text(json.dumps(model, indent=2))


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return 0


class Server:
    """MLServer on `host` serving one artifact; a context manager that always stops it.

    Ports not given are probed free on loopback (tests, serve-check); if another process takes
    one between the probe and the bind, the server is started again on new ones (3 tries).
    `metrics_port=0` and `grpc_port=0` (the default) turn those listeners off."""

    def __init__(
        self,
        artifact: Path,
        runtime: str | None = "onnxruntime",
        threads: int = 2,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        name: str | None = None,
        check: bool = True,
        log: Path | None = None,
        metrics_port: int | None = 0,
        grpc_port: int = 0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_batch_rows: int = 16,
        max_batch_time_ms: float = 0.0,
        pin: str | None = None,
    ):
        if runtime is not None and runtime not in RUNTIMES:
            raise UserError(f"unknown serving runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
        manifest = check_artifact(artifact, pin) if check else {}
        runtime = runtime or default_runtime(manifest)  # None: the one it was packaged for
        self.artifact, self.runtime, self.threads, self.host = Path(artifact), runtime, threads, host
        self.name = check_name(name or manifest.get("name") or Path(artifact).name)
        self._fixed = {"http": http_port, "metrics": metrics_port, "grpc": grpc_port}
        self.extra = {"max_batch_rows": max_batch_rows, "max_batch_time_s": max_batch_time_ms / 1e3}
        if pin:
            self.extra["manifest_sha256"] = pin.lower()
        self.max_body_bytes = max_body_bytes
        self.python = serve_python(runtime)
        self.log_path = Path(log) if log else None
        self.proc: subprocess.Popen | None = None
        self._dir: Path | None = None
        self._pick_ports()

    def _pick_ports(self) -> None:
        # None: probe a free one; 0: off (metrics, gRPC)
        self.ports = {k: (free_port(self.host) if v is None else v) for k, v in self._fixed.items()}
        self.http_port = self.ports["http"]
        self.url = f"{self.host}:{self.http_port}"

    def start(self) -> "Server":
        self._dir = Path(tempfile.mkdtemp(prefix="p2d-serve-"))
        write_settings(self._dir, self.artifact, self.name, self.runtime, self.threads, self.host, self.ports,
                       self.extra)
        if self.log_path is None:
            log_dir().mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir() / f"{self.name}-{self.http_port}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        cmd = [str(self.python), "-m", "prune2deploy.ship.mlserver_main", str(self._dir), "--parent",
               str(os.getpid()), "--max-body", str(self.max_body_bytes)] + (["--grpc"] if self.ports["grpc"] else [])
        self._log = open(self.log_path, "a")
        # its own session (a terminal's Ctrl-C reaches p2d, which stops it in order); it dies
        # with this process however this process ends (mlserver_main)
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self._dir, start_new_session=True
        )
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except (OSError, TypeError):
            return ""

    def load_error(self) -> str | None:
        """The reason the model failed to load, from the server's log (None while none)."""
        text = Path(self.log_path).read_text(errors="replace") if self.log_path else ""
        if LOAD_FAILED not in text:
            return None
        for line in reversed(text.splitlines()):
            if "ArtifactRefused" in line or "Error:" in line:
                return line.split(": ", 1)[-1].strip()[:300]
        return "the model failed to load"

    def exit_reason(self) -> str:
        lines = [ln for ln in self.log_tail(40).splitlines() if ln.strip()]
        return (lines[-1].strip()[-300:] if lines else "no output") + f" (server log {self.log_path})"

    def wait_ready(self, timeout: float = 120.0) -> "Server":
        """Until the model answers ready; ServerError if the process exits, the model fails to
        load, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        tries = 1
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                probed = any(v is None for v in self._fixed.values())
                if probed and tries < 3 and PORT_TAKEN in self.log_tail(40).lower():
                    self.stop()
                    self._pick_ports()
                    self.start()
                    tries += 1
                    continue
                raise ServerError(f"the server exited ({self.proc.returncode}): {self.exit_reason()}")
            if _get(f"http://{self.url}/v2/models/{self.name}/ready") == 200:
                return self
            err = self.load_error()
            if err:
                raise ServerError(f"model {self.name} did not load: {err}")
            time.sleep(0.25)
        raise ServerError(f"the server was not ready after {timeout:.0f} s: {self.exit_reason()}")

    def model_ready(self) -> bool:
        return _get(f"http://{self.url}/v2/models/{self.name}/ready") == 200

    def live(self) -> bool:
        return _get(f"http://{self.url}/v2/health/live") == 200

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> "Server":
        try:
            return self.start().wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def exposure(host: str, ports: dict) -> str | None:
    """One line on what a bind beyond loopback exposes (None on loopback)."""
    if host in LOOPBACK:
        return None
    where = "every interface" if host in ("0.0.0.0", "::", "") else host
    parts = [f"KServe V2 inference and health on :{ports['http']}"]
    if ports.get("metrics"):
        parts.append(f"Prometheus metrics on :{ports['metrics']}")
    if ports.get("grpc"):
        parts.append(f"gRPC on :{ports['grpc']}")
    return f"exposed on {where}: {', '.join(parts)}; no authentication or TLS: put it behind your gateway"


def serve_forever(artifact: Path, runtime: str | None, threads: int, host: str, port: int, name: str | None,
                  **options) -> int:
    """`p2d serve`: start, say where, stream nothing, stop on Ctrl-C or SIGTERM; if the server
    dies, say why and where its log is."""
    import signal

    def stop(*_):  # a service manager's SIGTERM stops the server as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server = Server(artifact, runtime, threads, host, port, name, **options)
        runtime = server.runtime
        if runtime == "deepsparse":
            print(f"licence: {DEEPSPARSE_LICENCE}", file=sys.stderr, flush=True)
        line = exposure(host, server.ports)
        if line:
            print(line, file=sys.stderr, flush=True)
        with server:  # stops the server on the way out, however it is left
            extra = [f"metrics http://{host}:{server.ports['metrics']}/metrics"] if server.ports["metrics"] else []
            extra += [f"gRPC {host}:{server.ports['grpc']}"] if server.ports["grpc"] else ["gRPC off"]
            print(
                f"serving {server.name} ({runtime}, {threads} threads) at http://{server.url}/v2/models/{server.name} "
                f"(KServe V2; {'; '.join(extra)}; Ctrl-C stops; server log {server.log_path})",
                file=sys.stderr,
                flush=True,
            )
            rc = server.proc.wait()
            print(f"p2d serve: the server exited ({rc}): {server.exit_reason()}", file=sys.stderr, flush=True)
            return rc or 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, also while it was starting: a clean stop
        return 0
