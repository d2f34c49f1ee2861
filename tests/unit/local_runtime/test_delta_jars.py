"""The Delta Lake jars: fetched from a Maven repository with their SHA-1 checked, cached, or a clear error."""
import hashlib
import http.server
import os
import subprocess
import sys
import threading

import pytest

from mlops.errors import ConfigError
from mlops.local import delta_jars
from support.spark_cluster import worker_environment

JAR_BYTES = b"PK\x03\x04 a stand-in jar"


class Repository(http.server.ThreadingHTTPServer):
    """A loopback Maven repository: path -> bytes; every other path is a 404."""

    def __init__(self, files: dict):
        self.files = files
        self.requested = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler):
                self.requested.append(handler.path)
                body = self.files.get(handler.path)
                handler.send_response(200 if body is not None else 404)
                handler.end_headers()
                handler.wfile.write(body or b"")

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/maven2"


@pytest.fixture
def repository(monkeypatch, tmp_path):
    def start(files):
        server = Repository(files)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        monkeypatch.setenv(delta_jars.REPOSITORY_ENV, server.url)
        monkeypatch.setenv(delta_jars.CACHE_ENV, str(tmp_path / "jars"))
        servers.append(server)
        return server

    servers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def served(artifact, content: bytes, sha1: str = None) -> dict:
    group, name, version = artifact
    path = f"/maven2/{group.replace('.', '/')}/{name}/{version}/{name}-{version}.jar"
    return {path: content, path + ".sha1": (sha1 or hashlib.sha1(content).hexdigest()).encode()}


def test_the_jars_are_fetched_once_then_read_from_the_cache(repository, tmp_path):
    files = {}
    for artifact in delta_jars.ARTIFACTS:
        files.update(served(artifact, JAR_BYTES + artifact[1].encode()))
    server = repository(files)
    jars = delta_jars.jar_paths()
    assert [jar.name for jar in jars] == ["delta-spark_4.1_2.13-4.4.0.jar", "delta-storage-4.4.0.jar"]
    assert jars[0].read_bytes() == JAR_BYTES + b"delta-spark_4.1_2.13"
    assert len(server.requested) == 4
    assert delta_jars.jar_paths() == jars and len(server.requested) == 4
    conf = delta_jars.spark_conf()
    assert conf["spark.jars"] == ",".join(str(jar) for jar in jars)
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"


def test_a_jar_that_cannot_be_fetched_names_the_artifact_the_cache_and_how_to_fill_it(repository, tmp_path):
    repository({})
    cache = tmp_path / "jars"
    with pytest.raises(ConfigError) as caught:
        delta_jars.jar_paths()
    message = str(caught.value)
    assert message.startswith(f"the Delta Lake jar io.delta:delta-spark_4.1_2.13:4.4.0 is not in the cache "
                              f"{cache} and could not be fetched from http://127.0.0.1:")
    assert "(HTTP 404)" in message
    assert (f"mvn dependency:copy -Dartifact=io.delta:delta-spark_4.1_2.13:4.4.0 -DoutputDirectory={cache}"
            in message)
    assert "MLOPS_MAVEN_REPOSITORY" in message
    assert list(cache.iterdir()) == []


def test_a_download_whose_checksum_differs_is_refused_and_leaves_nothing(repository, tmp_path):
    repository(served(delta_jars.ARTIFACTS[0], JAR_BYTES, sha1="0" * 40))
    with pytest.raises(ConfigError, match=r"\(its SHA-1 is [0-9a-f]{40}, Maven says 0{40}\)"):
        delta_jars.jar_paths()
    assert list((tmp_path / "jars").iterdir()) == []


def test_the_command_and_a_spark_session_say_so_without_a_stack_trace(tmp_path):
    environment = dict(os.environ, **worker_environment(), MLOPS_JARS_DIR=str(tmp_path / "empty"),
                       MLOPS_MAVEN_REPOSITORY="http://127.0.0.1:9/unreachable", MLOPS_HOME=str(tmp_path))
    command = subprocess.run([sys.executable, "-m", "mlops.local.delta_jars"], env=environment,
                             capture_output=True, text=True, timeout=60)
    assert command.returncode == 1
    assert command.stderr.startswith("error: the Delta Lake jar io.delta:delta-spark_4.1_2.13:4.4.0 is not "
                                     f"in the cache {tmp_path / 'empty'}")
    session = subprocess.run([sys.executable, "-m", "mlops", "table", "history", "trips", "--location",
                              "dbfs:/tables"], env=environment, capture_output=True, text=True, timeout=120)
    assert session.returncode != 0
    assert "Fill the cache by hand" in session.stderr
    assert "Traceback" not in session.stderr and "at org.apache" not in session.stderr
