"""`mlops azurite start` runs the emulator until interrupted and prints the connection string to export."""
import os
import signal
import subprocess
import sys

import pytest
from azure.storage.blob import BlobServiceClient

from mlops.local.azurite import available

EXPORT = "export AZURE_STORAGE_CONNECTION_STRING='"


@pytest.fixture
def started(tmp_path):
    if not available():
        pytest.fail("Azurite is not installed: run `npm ci` in the repository root", pytrace=False)
    process = subprocess.Popen([sys.executable, "-m", "mlops", "azurite", "start", "--port", "0"],
                               env=dict(os.environ, MLOPS_HOME=str(tmp_path)), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith(EXPORT):
                break
        yield process, lines
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_the_printed_connection_string_reaches_the_running_emulator_until_ctrl_c(started, tmp_path):
    process, lines = started
    assert lines and lines[-1].startswith(EXPORT), "".join(lines) + process.stderr.read()
    connection_string = lines[-1][len(EXPORT):].rstrip().rstrip("'")
    service = BlobServiceClient.from_connection_string(connection_string)
    service.create_container("by-hand")
    assert [container.name for container in service.list_containers()] == ["by-hand"]
    assert str(tmp_path / "azurite") in lines[0]
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert "stopping Azurite" in process.stdout.read()


def test_sigterm_stops_the_emulator_too(started):
    import socket
    import time

    process, lines = started
    port = int(lines[-1].split("BlobEndpoint=http://127.0.0.1:")[1].split("/")[0])
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "stopping Azurite" in process.stdout.read()
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                break
        assert time.monotonic() < deadline, f"Azurite still listens on {port} after SIGTERM"
        time.sleep(0.2)
