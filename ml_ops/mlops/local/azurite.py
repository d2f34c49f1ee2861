"""Run Azurite, the Azure Storage emulator from npm, as a local blob endpoint.

Used by ``make demo`` and by the tests, so that blob publishing runs against a
real storage API on loopback. Azurite is installed by ``npm ci`` at the repo root.
"""
from __future__ import annotations

import http.client
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from mlops.errors import PublishError

logger = logging.getLogger(__name__)

EXECUTABLE = "azurite-blob"
ACCOUNT_NAME = "devstoreaccount1"
# The documented, public development-storage key. It opens only the local emulator,
# but it is still kept out of logs and reprs like any other key.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
LOG_FILE_NAME = "azurite.log"
_LOG_TAIL_LINES = 20
_LISTENING_MESSAGE = b"successfully listens on"
_PORT_PICK_ATTEMPTS = 3


def _search_roots() -> list[Path]:
    """Directories whose ancestors may hold ``node_modules``: MLOPS_REPO_ROOT, cwd, this package."""
    roots = []
    if os.environ.get("MLOPS_REPO_ROOT"):
        roots.append(Path(os.environ["MLOPS_REPO_ROOT"]))
    roots.append(Path.cwd())
    # An editable or venv install inside the repo finds the repo's node_modules too.
    roots.append(Path(__file__).resolve().parent)
    return roots


def find_executable() -> Path | None:
    """The ``azurite-blob`` launcher: from a repo's node_modules/.bin, else from PATH."""
    for root in _search_roots():
        for directory in (root, *root.resolve().parents):
            candidate = directory / "node_modules" / ".bin" / EXECUTABLE
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    on_path = shutil.which(EXECUTABLE)
    return Path(on_path) if on_path else None


def available() -> bool:
    """Whether Azurite can be started (its launcher is installed and node is on PATH)."""
    return find_executable() is not None and shutil.which("node") is not None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _azurite_answers(host: str, port: int) -> bool:
    """Whether Azurite itself answers HTTP on the port (not some other process holding it)."""
    connection = http.client.HTTPConnection(host, port, timeout=1)
    try:
        connection.request("GET", f"/{ACCOUNT_NAME}?comp=list")
        return connection.getresponse().getheader("Server", "").startswith("Azurite-Blob")
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _listening_logged(log_path: Path, offset: int) -> bool:
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(offset)
            return _LISTENING_MESSAGE in log_file.read()
    except OSError:
        return False


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log written)"
    return "\n".join(lines[-_LOG_TAIL_LINES:]) or "(log is empty)"


class AzuriteServer:
    """A running ``azurite-blob`` process; use :meth:`start` and stop it with ``with`` or :meth:`stop`."""

    def __init__(self, process: subprocess.Popen, location: Path, host: str, port: int, log_path: Path):
        self._process = process
        self.location = location
        self.host = host
        self.port = port
        self.log_path = log_path

    @classmethod
    def start(cls, location: Path, host: str = "127.0.0.1", port: int = 0,
              timeout_seconds: float = 30.0) -> "AzuriteServer":
        """Start Azurite storing its data under ``location``; ``port=0`` picks a free port.

        Waits until Azurite answers HTTP on the port. Raises PublishError when Azurite
        is not installed, exits early (a busy port, say), or does not answer within
        ``timeout_seconds``.
        """
        executable = find_executable()
        if executable is None:
            raise PublishError(
                f"Azurite is not installed: '{EXECUTABLE}' was found neither under node_modules/.bin "
                "(searched upwards from MLOPS_REPO_ROOT and the working directory) nor on PATH; "
                "run `npm ci` in the repository root")
        location = Path(location)
        location.mkdir(parents=True, exist_ok=True)
        log_path = location / LOG_FILE_NAME
        # A port picked here can be taken by another process before Azurite binds it.
        attempts_left = _PORT_PICK_ATTEMPTS if port == 0 else 1
        while True:
            attempts_left -= 1
            chosen_port = port or _free_port(host)
            log_offset = log_path.stat().st_size if log_path.exists() else 0
            command = [
                str(executable), "--blobHost", host, "--blobPort", str(chosen_port),
                "--location", str(location), "--silent", "--skipApiVersionCheck", "--loose",
                # Telemetry would phone home, and its pending request keeps node alive for
                # about 10 s after SIGTERM.
                "--disableTelemetry",
            ]
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
            server = cls(process, location, host, chosen_port, log_path)
            try:
                server._wait_until_ready(timeout_seconds, log_offset)
            except PublishError as error:
                server.stop()
                if attempts_left > 0 and "EADDRINUSE" in str(error):
                    continue
                raise
            except BaseException:
                server.stop()
                raise
            logger.info("Azurite blob service listening on %s (data in %s)", server.blob_endpoint, location)
            return server

    def _wait_until_ready(self, timeout_seconds: float, log_offset: int) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PublishError(
                    f"Azurite exited with code {self._process.returncode} before listening on "
                    f"{self.host}:{self.port}; last lines of {self.log_path}:\n{_log_tail(self.log_path)}")
            # The log line proves that this process, not another one on the port, is listening.
            if _listening_logged(self.log_path, log_offset) and _azurite_answers(self.host, self.port):
                return
            time.sleep(0.1)
        raise PublishError(
            f"Azurite did not answer on {self.host}:{self.port} within {timeout_seconds:g} s; "
            f"last lines of {self.log_path}:\n{_log_tail(self.log_path)}")

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """Connection string for the emulator's account. Contains the account key: do not log it."""
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={self.blob_endpoint};")

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout_seconds: float = 10.0) -> None:
        """Terminate Azurite, and kill it if it has not exited within ``timeout_seconds``."""
        if self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            logger.warning("Azurite did not exit within %g s of SIGTERM; killing it", timeout_seconds)
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> "AzuriteServer":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"AzuriteServer(endpoint={self.blob_endpoint!r}, location={str(self.location)!r}, {state})"
