"""A loopback stand-in for the Application Insights ingestion endpoint.

:class:`AppInsightsCapture` is a real HTTP server on 127.0.0.1 that accepts what the
Azure Monitor exporters (OpenTelemetry's and OpenCensus') POST to ``/v2.1/track`` (and the
older ``/v2/track``), stores the envelopes and answers like the service does. Tests import the ``appinsights``
fixture with ``from support.appinsights import appinsights  # noqa: F401``.
"""
import gzip
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support.ports import free_port

FAKE_INSTRUMENTATION_KEY = "11111111-2222-3333-4444-555555555555"
TRACK_PATHS = ("/v2.1/track", "/v2/track")
BASE_TYPES = {
    "traces": "MessageData",
    "dependencies": "RemoteDependencyData",
    "requests": "RequestData",
    "exceptions": "ExceptionData",
    "customMetrics": "MetricData",
    "customEvents": "EventData",
}


TABLES_BY_BASE_TYPE = {base_type: table for table, base_type in BASE_TYPES.items()}
TABLES_BY_ITEM_TYPE = {"trace": "traces", "dependency": "dependencies", "request": "requests",
                       "exception": "exceptions", "customMetric": "customMetrics",
                       "customEvent": "customEvents"}


def envelope_summary(envelope) -> tuple:
    """What every backend must agree on: table, name, success flag, stage and job run id."""
    base = envelope["data"]["baseData"]
    table = TABLES_BY_BASE_TYPE[envelope["data"]["baseType"]]
    if table == "exceptions":
        name = base["exceptions"][0]["typeName"]
    elif table == "customMetrics":
        name = base["metrics"][0]["name"]
    else:
        name = base.get("name") or base.get("message")
    properties = base.get("properties") or {}
    return table, name, base.get("success"), properties.get("stage"), properties.get("job_run_id")


def jsonl_summary(item) -> tuple:
    """:func:`envelope_summary` of an item the JSON-lines exporter wrote."""
    dimensions = item["customDimensions"]
    return (TABLES_BY_ITEM_TYPE[item["itemType"]], item["name"] or item["message"], item["success"],
            dimensions.get("stage"), dimensions.get("job_run_id"))


def decode_envelopes(body: bytes, content_encoding: str = "") -> list:
    """Envelopes from a request body: a JSON array, one JSON object, or JSON lines."""
    if "gzip" in (content_encoding or "").lower():
        body = gzip.decompress(body)
    text = body.decode("utf-8").strip()
    if not text:
        return []
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return parsed if isinstance(parsed, list) else [parsed]


# A port nothing listens on: where an unreachable ingestion endpoint points.
closed_loopback_port = free_port


class _TrackHandler(BaseHTTPRequestHandler):
    server_version = "AppInsightsCapture/1.0"

    def do_POST(self):  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        capture = self.server.capture
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        # The exporter joins the endpoint and "/v2.1/track", which can double the slash.
        path = "/" + self.path.split("?", 1)[0].lstrip("/")
        capture._note_request("POST", path)
        if path not in TRACK_PATHS:
            self._answer(404, {"error": f"unknown path {path}"})
            return
        try:
            envelopes = decode_envelopes(body, self.headers.get("Content-Encoding", ""))
        except (ValueError, OSError) as exc:
            self._answer(400, {"itemsReceived": 0, "itemsAccepted": 0,
                               "errors": [{"index": 0, "statusCode": 400, "message": str(exc)}]})
            return
        status = capture.status_code
        if status == 200:
            capture._store(envelopes)
        self._answer(status, {"itemsReceived": len(envelopes),
                              "itemsAccepted": len(envelopes) if status == 200 else 0,
                              "errors": []})

    def do_GET(self):  # noqa: N802
        self.server.capture._note_request("GET", self.path)
        self._answer(404, {"error": "only POST /v2.1/track is served"})

    def _answer(self, status, payload):
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # keep test output clean
        pass


class AppInsightsCapture:
    """Receives Application Insights envelopes on 127.0.0.1 for assertions.

    ``status_code`` (default 200) is what the next POSTs get; envelopes are stored only when
    it is 200, as the real service accepts them only then.
    """

    def __init__(self):
        self.status_code = 200
        self.requests = []
        self._envelopes = []
        self._lock = threading.Lock()
        self._server = None
        self._thread = None
        self._port = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "AppInsightsCapture":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _TrackHandler)
        self._server.daemon_threads = True
        self._server.capture = self
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="AppInsightsCapture", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()
        return False

    # -- what tests read ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port; still known after stop(), so tests can use it as a closed port."""
        if self._port is None:
            raise RuntimeError("AppInsightsCapture is not started; call start() or use it in a with block")
        return self._port

    @property
    def connection_string(self) -> str:
        return (f"InstrumentationKey={FAKE_INSTRUMENTATION_KEY};"
                f"IngestionEndpoint=http://127.0.0.1:{self.port}/")

    @property
    def envelopes(self) -> list:
        with self._lock:
            return list(self._envelopes)

    def items(self, kind: str) -> list:
        """Envelopes of one Kusto table: traces, dependencies, requests, exceptions, customMetrics..."""
        if kind not in BASE_TYPES:
            raise ValueError(f"unknown item kind {kind!r}; use one of {sorted(BASE_TYPES)}")
        return [envelope for envelope in self.envelopes
                if envelope.get("data", {}).get("baseType") == BASE_TYPES[kind]]

    def wait_for(self, predicate, timeout: float = 5.0, interval: float = 0.02):
        """Poll ``predicate(capture)`` until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self)
            if result:
                return result
            if time.monotonic() >= deadline:
                kinds = {kind: len(self.items(kind)) for kind in BASE_TYPES}
                raise AssertionError(f"condition not met within {timeout}s; received {kinds}")
            time.sleep(interval)

    def clear(self) -> None:
        with self._lock:
            self._envelopes.clear()
            self.requests.clear()

    def _store(self, envelopes):
        with self._lock:
            self._envelopes.extend(envelopes)

    def _note_request(self, method, path):
        with self._lock:
            self.requests.append((method, path))


@pytest.fixture
def appinsights(monkeypatch):
    """A running :class:`AppInsightsCapture`; SDK statsbeat is disabled so nothing leaves loopback."""
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("APPINSIGHTS_INSTRUMENTATIONKEY", raising=False)
    with AppInsightsCapture() as capture:
        yield capture
