"""Starting and stopping the Azurite emulator."""
import socket

import pytest

from mlops.local.azurite import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer, available, find_executable
from mlops.errors import PublishError


@pytest.mark.slow
def test_azurite_is_installed_for_the_test_suite():
    assert available(), "run `npm ci` in the repository root"
    assert find_executable().name == "azurite-blob"


def test_mlops_repo_root_is_searched_first_and_upwards(tmp_path, monkeypatch):
    launcher = tmp_path / "other-repo" / "node_modules" / ".bin" / "azurite-blob"
    launcher.parent.mkdir(parents=True)
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    (tmp_path / "other-repo" / "ml_ops").mkdir()
    monkeypatch.setenv("MLOPS_REPO_ROOT", str(tmp_path / "other-repo" / "ml_ops"))
    assert find_executable() == launcher


@pytest.mark.slow
def test_server_answers_on_its_port_and_stops(tmp_path):
    with AzuriteServer.start(tmp_path / "azurite") as server:
        assert server.running
        assert server.blob_endpoint == f"http://127.0.0.1:{server.port}/{ACCOUNT_NAME}"
        assert f"BlobEndpoint={server.blob_endpoint};" in server.connection_string
        assert ACCOUNT_KEY not in repr(server)
        with socket.create_connection(("127.0.0.1", server.port), timeout=2):
            pass
    assert not server.running
    assert "successfully listens" in (tmp_path / "azurite" / "azurite.log").read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=2).close()


@pytest.mark.slow
def test_busy_port_fails_with_the_log_tail(tmp_path):
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen(1)
        port = occupant.getsockname()[1]
        with pytest.raises(PublishError) as caught:
            AzuriteServer.start(tmp_path / "azurite", port=port, timeout_seconds=30)
    message = str(caught.value)
    assert f"Azurite exited with code 1 before listening on 127.0.0.1:{port}" in message
    assert "EADDRINUSE" in message


def test_missing_executable_says_to_run_npm_ci(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLOPS_REPO_ROOT", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("mlops.local.azurite._search_roots", lambda: [tmp_path])
    assert not available()
    with pytest.raises(PublishError, match="run `npm ci` in the repository root"):
        AzuriteServer.start(tmp_path / "azurite")
