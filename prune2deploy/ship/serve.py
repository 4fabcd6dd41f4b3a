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
from .verify import check_files

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = ("onnxruntime", "openvino", "deepsparse")  # mlserver_runtime.SESSIONS (not importable here)
LOAD_FAILED = "Some of the models failed to load"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_artifact(artifact: Path) -> dict:
    """The manifest of an intact artifact; one line (UserError) for anything else."""
    artifact = Path(artifact)
    if not (artifact / "manifest.json").is_file():
        raise UserError(f"{artifact}: not a p2d artifact (no manifest.json)")
    try:
        manifest = read_json(artifact / "manifest.json")
    except ValueError:
        raise UserError(f"{artifact}: manifest.json is not valid JSON") from None
    bad = check_files(artifact, manifest)
    if bad:
        raise UserError(f"{artifact}: refused to serve: {bad} (the manifest's sha256 differs)")
    return manifest


def write_settings(
    where: Path, artifact: Path, name: str, runtime: str, threads: int, host: str, http_port: int, grpc_port: int
) -> None:
    """MLServer's settings.json and <name>/model-settings.json in `where`."""
    settings = {
        "host": host,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_endpoint": None,  # no metrics server (and no third port)
        "parallel_workers": 0,  # inference in the server process: the runtime owns the threads
        "debug": False,
        "load_models_at_startup": True,
    }
    model = {
        "name": name,
        "implementation": "prune2deploy.ship.mlserver_runtime.P2DModel",
        "parameters": {"uri": str(Path(artifact).resolve()), "extra": {"runtime": runtime, "threads": threads}},
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
    """MLServer on `host` serving one artifact; a context manager that always stops it."""

    def __init__(
        self,
        artifact: Path,
        runtime: str = "onnxruntime",
        threads: int = 2,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        name: str | None = None,
        check: bool = True,
        log: Path | None = None,
    ):
        if runtime not in RUNTIMES:
            raise UserError(f"unknown serving runtime '{runtime}' (known: {', '.join(RUNTIMES)})")
        manifest = check_artifact(artifact) if check else {}
        self.artifact, self.runtime, self.threads, self.host = Path(artifact), runtime, threads, host
        self.name = name or manifest.get("name") or Path(artifact).name
        self.http_port = http_port or free_port()
        self.url = f"{host}:{self.http_port}"
        self.python = serve_python(runtime)
        self.log_path = log
        self.proc: subprocess.Popen | None = None
        self._dir: Path | None = None

    def start(self) -> "Server":
        self._dir = Path(tempfile.mkdtemp(prefix="p2d-serve-"))
        write_settings(
            self._dir, self.artifact, self.name, self.runtime, self.threads, self.host, self.http_port, free_port()
        )
        self.log_path = self.log_path or self._dir / "server.log"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        mlserver = [str(self.python), "-m", "mlserver.cli.main", "start", str(self._dir)]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            mlserver, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self._dir, start_new_session=True
        )
        return self

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-n:])
        except OSError:
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

    def wait_ready(self, timeout: float = 120.0) -> "Server":
        """Until the model answers ready; ServerError if the process exits, the model fails to
        load, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        base = f"http://{self.url}/v2"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"the server exited ({self.proc.returncode}): {self.log_tail(3)[-300:]}")
            if _get(f"{base}/models/{self.name}/ready") == 200:
                return self
            err = self.load_error()
            if err:
                raise ServerError(f"model {self.name} did not load: {err}")
            time.sleep(0.25)
        raise ServerError(f"the server was not ready after {timeout:.0f} s: {self.log_tail(3)[-300:]}")

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


def serve_forever(artifact: Path, runtime: str, threads: int, host: str, port: int, name: str | None) -> int:
    """`p2d serve`: start, say where, stream nothing, stop on Ctrl-C or when the server exits."""
    import signal

    def stop(*_):  # a service manager's SIGTERM stops the server as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server = Server(artifact, runtime, threads, host, port, name, log=None)
        with server:  # stops the server on the way out, however it is left
            print(
                f"serving {server.name} ({runtime}, {threads} threads) at http://{server.url}/v2/models/{server.name} "
                f"(KServe V2; Ctrl-C stops; server log {server.log_path})",
                file=sys.stderr,
                flush=True,
            )
            return server.proc.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, also while it was starting: a clean stop
        return 0
