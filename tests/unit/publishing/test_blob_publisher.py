"""BlobPublisher against a real Azurite: stored properties, error messages, secrets and retries."""
import base64
import hashlib
import http.client
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlops.local.azurite import ACCOUNT_KEY, ACCOUNT_NAME
from mlops.errors import ConfigError, PublishError
from mlops.publishing import BlobPublisher
from support.ports import free_port as closed_loopback_port

# Every test here talks to Azurite, or times a connection failure.
pytestmark = pytest.mark.slow

WRONG_KEY = base64.b64encode(b"not the emulator key, but well formed" * 2).decode()
SAS_SIGNATURE = "Zm9yZ2VkLXNpZ25hdHVyZS1mb3ItdGVzdHM%3D"


def shared_key_connection_string(port: int, key: str = ACCOUNT_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT_NAME};")


def full_error_text(error: BaseException) -> str:
    """Everything a traceback would print, including the chained causes."""
    return "".join(traceback.format_exception(error))


def test_uploaded_blobs_carry_content_md5_and_content_type(azurite, storage, container, make_files):
    files = make_files("part-0.csv")
    with BlobPublisher(azurite.connection_string, container) as publisher:
        publisher.check_access()
        result = publisher.publish(files, "scores", "run-1", {})

    blob = storage.get_blob_client(container, "scores/run-1/part-0.csv")
    properties = blob.get_blob_properties()
    local = files[0][0].read_bytes()
    assert bytes(properties.content_settings.content_md5) == hashlib.md5(local).digest()
    assert properties.content_settings.content_type == "text/csv"
    assert properties.size == len(local)
    manifest_blob = storage.get_blob_client(container, "scores/run-1/_manifest.json")
    manifest_properties = manifest_blob.get_blob_properties()
    assert manifest_properties.content_settings.content_type == "application/json"
    assert manifest_properties.last_modified >= properties.last_modified
    assert result.manifest_url == f"{azurite.blob_endpoint}/{container}/scores/run-1/_manifest.json"
    assert result.url == f"{azurite.blob_endpoint}/{container}/scores/run-1/"


def test_check_access_creates_the_container(azurite, storage, container):
    assert not storage.get_container_client(container).exists()
    with BlobPublisher(azurite.connection_string, container) as publisher:
        publisher.check_access()
    assert storage.get_container_client(container).exists()


@pytest.mark.timeout(60)
def test_unreachable_endpoint_fails_instead_of_hanging_naming_account_and_container(container):
    connection_string = shared_key_connection_string(closed_loopback_port())
    with BlobPublisher(connection_string, container) as publisher:
        with pytest.raises(PublishError) as caught:
            publisher.check_access()

    message = str(caught.value)
    assert f"account '{ACCOUNT_NAME}' container '{container}'" in message
    assert "is unreachable" in message
    assert ACCOUNT_KEY not in full_error_text(caught.value)


@pytest.mark.timeout(60)
def test_wrong_key_reports_authentication_failure_without_the_key(azurite, container, make_files):
    connection_string = shared_key_connection_string(azurite.port, key=WRONG_KEY)
    with BlobPublisher(connection_string, container) as publisher:
        with pytest.raises(PublishError) as caught:
            publisher.check_access()
        with pytest.raises(PublishError) as caught_publish:
            publisher.publish(make_files("a.csv"), "scores", "run-1", {})

    for error in (caught.value, caught_publish.value):
        message = str(error)
        assert f"account '{ACCOUNT_NAME}' container '{container}'" in message
        assert "authentication failed (HTTP 403" in message
        assert WRONG_KEY not in full_error_text(error)
        assert ACCOUNT_KEY not in full_error_text(error)


def test_sas_signature_never_appears_in_errors_or_their_causes(container):
    port = closed_loopback_port()
    connection_string = (f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT_NAME};SharedAccessSignature="
                         f"sv=2021-08-06&ss=b&srt=sco&sp=rwdlac&se=2099-01-01&sig={SAS_SIGNATURE}")
    with BlobPublisher(connection_string, container, retries=0) as publisher:
        with pytest.raises(PublishError) as caught:
            publisher.check_access()
    assert f"container '{container}'" in str(caught.value)
    text = full_error_text(caught.value)
    assert "Connection refused" in text or "unreachable" in text
    assert SAS_SIGNATURE not in text
    assert "sig=***" in text or "sig=" not in text


@pytest.mark.parametrize("connection_string, message", [
    ("", "blob connection string is empty"),
    ("   ", "blob connection string is empty"),
    (f"AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};BlobEndpoint",
     "blob connection string is malformed"),
    ("AccountKey=abc;", "blob connection string for container 'results' is not usable"),
])
def test_unusable_connection_string_is_rejected_without_echoing_it(connection_string, message):
    with pytest.raises(ConfigError) as caught:
        BlobPublisher(connection_string, "results")
    assert message in str(caught.value)
    assert ACCOUNT_KEY not in full_error_text(caught.value)


@pytest.mark.parametrize("arguments, message", [
    ({"container": "Results"}, "container name 'Results' is invalid"),
    ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1, got 0"),
    ({"retries": -1}, "retries must be an integer >= 0, got -1"),
    ({"timeout_seconds": 0}, "timeout_seconds must be > 0, got 0"),
])
def test_bad_publisher_settings_are_rejected(arguments, message):
    settings = {"connection_string": shared_key_connection_string(10000), "container": "results", **arguments}
    with pytest.raises(ConfigError) as caught:
        BlobPublisher(**settings)
    assert message in str(caught.value)


def test_repr_names_account_and_container_only(azurite):
    publisher = BlobPublisher(azurite.connection_string, "results")
    assert repr(publisher) == f"BlobPublisher(account='{ACCOUNT_NAME}', container='results')"
    publisher.close()


class FaultInjectingProxy:
    """Forwards HTTP to Azurite but answers 503 ServerBusy to the first ``failures`` PUTs of one blob."""

    def __init__(self, upstream_port: int, failing_blob: str, failures: int):
        self.failing_blob = failing_blob
        self.failures_left = failures
        self.puts_of_failing_blob = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                path = self.path.split("?")[0]
                if self.command == "PUT" and path.endswith("/" + proxy.failing_blob):
                    proxy.puts_of_failing_blob += 1
                    if proxy.failures_left > 0:
                        proxy.failures_left -= 1
                        payload = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
                                   b"<Message>The server is busy.</Message></Error>")
                        self.send_response(503)
                        self.send_header("x-ms-error-code", "ServerBusy")
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(payload)))
                        self.end_headers()
                        self.wfile.write(payload)
                        return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=10)
                try:
                    upstream.request(self.command, self.path, body=body, headers=dict(self.headers))
                    response = upstream.getresponse()
                    payload = response.read()
                    self.send_response(response.status)
                    for name, value in response.getheaders():
                        if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    upstream.close()

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _forward

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()


def test_transient_upload_failure_is_retried(azurite, storage, container, make_files):
    files = make_files("part-0.csv", "part-1.csv")
    with FaultInjectingProxy(azurite.port, "part-1.csv", failures=2) as proxy:
        with BlobPublisher(shared_key_connection_string(proxy.port), container, retries=3) as publisher:
            publisher.check_access()
            publisher.publish(files, "scores", "run-1", {})

    assert proxy.puts_of_failing_blob == 3
    blob = storage.get_blob_client(container, "scores/run-1/part-1.csv")
    assert blob.download_blob().readall() == files[1][0].read_bytes()
    assert storage.get_blob_client(container, "scores/run-1/_manifest.json").exists()


def test_persistent_upload_failure_gives_up_and_names_the_file(azurite, storage, container, make_files):
    files = make_files("part-0.csv", "part-1.csv")
    with FaultInjectingProxy(azurite.port, "part-1.csv", failures=100) as proxy:
        with BlobPublisher(shared_key_connection_string(proxy.port), container, retries=2) as publisher:
            publisher.check_access()
            with pytest.raises(PublishError) as caught:
                publisher.publish(files, "scores", "run-1", {})

    assert proxy.puts_of_failing_blob == 3
    message = str(caught.value)
    assert f"to account '{ACCOUNT_NAME}' container '{container}' failed at file 'part-1.csv'" in message
    assert "HTTP 503 (ServerBusy)" in message
    assert not storage.get_blob_client(container, "scores/run-1/_manifest.json").exists()
