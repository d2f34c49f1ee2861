"""Which errors are transient, and how retries behave, against real clients on loopback."""
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3
from azure.core import PipelineClient
from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.rest import HttpRequest
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    TEMPORARILY_UNAVAILABLE,
)

from mlops.errors import ConfigError, RegistryError, TransientError
from mlops.publishing.retry import (backoff_delay, call_with_retry, is_transient, is_transient_status,
                                    retry_transient)
from support.appinsights import closed_loopback_port

from .conftest import DATABRICKS_TOKEN

FAST = dict(base_delay=0.001, max_delay=0.002)


class ScriptedServer:
    """A loopback HTTP server that answers GETs with a scripted list of status codes."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                status = server.statuses[min(server.calls, len(server.statuses) - 1)]
                server.calls += 1
                body = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def scripted_server():
    servers = []

    def make(*statuses):
        servers.append(ScriptedServer(statuses))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def _raised(function):
    try:
        function()
    except Exception as exc:
        return exc
    raise AssertionError("expected an exception")


def _azure_error(server):
    client = PipelineClient(base_url=server.url)
    return _raised(lambda: client.send_request(HttpRequest("GET", server.url)).raise_for_status())


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504, 408])
def test_http_throttling_and_server_errors_are_transient(scripted_server, status):
    server = scripted_server(status)
    requests_error = _raised(lambda: requests.get(server.url, timeout=5).raise_for_status())
    azure_error = _azure_error(server)
    assert isinstance(requests_error, requests.HTTPError)
    assert isinstance(azure_error, HttpResponseError) and azure_error.status_code == status
    assert is_transient(requests_error) and is_transient(azure_error)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 501])
def test_other_http_errors_are_permanent(scripted_server, status):
    server = scripted_server(status)
    requests_error = _raised(lambda: requests.get(server.url, timeout=5).raise_for_status())
    azure_error = _azure_error(server)
    assert not is_transient(requests_error)
    assert not is_transient(azure_error)


def test_refused_connections_are_transient_in_every_client():
    url = f"http://127.0.0.1:{closed_loopback_port()}/"
    requests_error = _raised(lambda: requests.get(url, timeout=2))
    urllib3_error = _raised(lambda: urllib3.PoolManager(retries=False).request("GET", url))
    azure_error = _raised(lambda: PipelineClient(base_url=url).send_request(HttpRequest("GET", url)))
    assert isinstance(requests_error, requests.ConnectionError)
    assert isinstance(urllib3_error, urllib3.exceptions.NewConnectionError)
    assert isinstance(azure_error, ServiceRequestError)
    assert is_transient(requests_error) and is_transient(urllib3_error) and is_transient(azure_error)


@pytest.mark.parametrize("error", [
    TransientError("throttled"), ConnectionResetError("reset"), ConnectionRefusedError(),
    TimeoutError("slow"), requests.Timeout("slow"), requests.exceptions.ChunkedEncodingError(),
    urllib3.exceptions.ProtocolError("connection aborted"),
    urllib3.exceptions.MaxRetryError(None, "/", reason=urllib3.exceptions.ReadTimeoutError(None, "/", "t")),
    ServiceRequestError("dns"), ServiceResponseError("dropped"),
    MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
    MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED),
    RestException({"error_code": "RESOURCE_EXHAUSTED", "message": "quota"}),
    RestException({"error_code": "INTERNAL_ERROR", "message": "server error"}),
], ids=lambda error: type(error).__name__)
def test_transient_errors(error):
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    ValueError("bad"), ConfigError("unknown parameter"), KeyError("x"), PermissionError("denied"),
    MlflowException("generic failure"),
    MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE),
    RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no model"}),
    RestException({"error_code": "PERMISSION_DENIED", "message": "no"}),
    ResourceNotFoundError("gone"), requests.exceptions.SSLError("certificate verify failed"),
    urllib3.exceptions.MaxRetryError(None, "/", reason=ValueError("bad url")),
], ids=lambda error: type(error).__name__)
def test_permanent_errors(error):
    assert not is_transient(error)


def test_an_error_raised_from_a_transient_one_is_transient():
    try:
        try:
            raise ConnectionResetError("peer reset")
        except ConnectionResetError as cause:
            raise RegistryError("registry call failed") from cause
    except RegistryError as wrapped:
        assert is_transient(wrapped)


def test_mlflow_network_failures_raised_while_handling_are_transient_but_plain_ones_are_not():
    try:
        try:
            raise requests.ConnectionError("refused")
        except requests.ConnectionError:
            raise MlflowException("API request to http://x failed with exception refused")
    except MlflowException as raised:
        assert is_transient(raised)
    try:
        try:
            raise ValueError("bad")
        except ValueError:
            raise MlflowException("API request failed")
    except MlflowException as raised:
        assert not is_transient(raised)


@pytest.mark.parametrize("status, expected", [
    (408, True), (429, True), (500, True), (599, True), (501, False), (505, False), (404, False),
    ("503", True), (None, False), ("abc", False),
])
def test_is_transient_status(status, expected):
    assert is_transient_status(status) is expected


def test_transient_errors_are_retried_then_the_last_one_is_re_raised(caplog):
    calls = []

    def always_throttled():
        calls.append(1)
        raise TransientError(f"throttled #{len(calls)} with token {DATABRICKS_TOKEN}")

    with caplog.at_level(logging.WARNING, logger="mlops.publishing.retry"):
        with pytest.raises(TransientError, match="throttled #3") as raised:
            call_with_retry(always_throttled, attempts=3, **FAST)
    assert type(raised.value) is TransientError
    assert len(calls) == 3
    messages = [record.getMessage() for record in caplog.records if record.name == "mlops.publishing.retry"]
    assert len(messages) == 3
    assert "attempt 1 of 3 with TransientError" in messages[0] and "retrying in" in messages[0]
    assert "attempt 3 of 3" in messages[2] and "giving up" in messages[2]
    assert all(DATABRICKS_TOKEN not in message for message in messages)


def test_permanent_errors_are_raised_at_once():
    calls = []

    def invalid():
        calls.append(1)
        raise ValueError("training_num_leaves must be > 1")

    with pytest.raises(ValueError, match="training_num_leaves"):
        call_with_retry(invalid, attempts=5, **FAST)
    assert len(calls) == 1


def test_keyboard_interrupt_is_never_retried():
    calls = []

    def interrupted():
        calls.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call_with_retry(interrupted, attempts=3, **FAST)
    assert len(calls) == 1


def test_a_flaky_function_that_succeeds_on_attempt_three_returns_its_value():
    calls = []

    @retry_transient(attempts=4, **FAST)
    def flaky(value, suffix=""):
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return value + suffix

    assert flaky("model", suffix="@Champion") == "model@Champion"
    assert len(calls) == 3
    assert flaky.__name__ == "flaky"


def test_bare_decorator_uses_the_defaults():
    @retry_transient
    def ok():
        return 7

    assert ok() == 7


def test_custom_retry_predicate():
    calls = []

    def lookup():
        calls.append(1)
        raise KeyError("not yet")

    with pytest.raises(KeyError):
        call_with_retry(lookup, attempts=2, retry_on=lambda exc: isinstance(exc, KeyError), **FAST)
    assert len(calls) == 2


def test_requests_against_a_server_returning_503_then_200(scripted_server):
    server = scripted_server(503, 503, 200)

    def fetch():
        response = requests.get(server.url, timeout=5)
        response.raise_for_status()
        return response.json()

    assert call_with_retry(fetch, attempts=4, **FAST) == {"status": 200}
    assert server.calls == 3


def test_requests_against_a_server_that_stays_unavailable_raise_the_http_error(scripted_server):
    server = scripted_server(503)

    def fetch():
        requests.get(server.url, timeout=5).raise_for_status()

    with pytest.raises(requests.HTTPError, match="503"):
        call_with_retry(fetch, attempts=2, **FAST)
    assert server.calls == 2


@pytest.mark.parametrize("options, message", [
    (dict(attempts=0), "attempts must be an integer >= 1, got 0"),
    (dict(attempts=2.5), "attempts must be an integer >= 1, got 2.5"),
    (dict(attempts=True), "attempts must be an integer >= 1, got True"),
    (dict(base_delay=-1), "base_delay must be >= 0 seconds, got -1"),
    (dict(base_delay=2.0, max_delay=1.0), r"max_delay \(1.0\) must be >= base_delay \(2.0\)"),
])
def test_bad_retry_policies_are_rejected_with_a_message(options, message):
    with pytest.raises(ValueError, match=message):
        call_with_retry(lambda: None, **options)
    with pytest.raises(ValueError, match=message):
        retry_transient(**options)


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 8.0), (9, 8.0)]:
        delays = [backoff_delay(attempt, 0.5, 8.0) for _ in range(50)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1, "jitter spreads the delays"
