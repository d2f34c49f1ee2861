"""A loopback HTTP server that plays the Databricks REST endpoints the code still calls itself.

The bundle deploys everything else; what remains is Lakehouse Monitoring, which the monitoring
job's ``lakehouse`` backend drives. The real databricks-sdk ``WorkspaceClient`` talks to this
server over HTTP, so tests exercise the SDK's request building, authentication and error
mapping. It records every request.

Endpoints: ``/.well-known/databricks-config`` (the SDK's host metadata probe), Lakehouse
Monitoring's ``unity-catalog/tables/{table}/monitor`` (get, create, update) and
``.../monitor/refreshes`` (run, get) under API versions 2.0 to 2.2, and Model Serving's
``serving-endpoints/{name}`` (get) and ``.../config`` (update), which a rollout drives.
"""
import dataclasses
import json
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

WORKSPACE_ID = "1234567890123456"
# Built from parts so the literal never looks like a leaked credential to a scanner.
FAKE_TOKEN = "dapi" + "0123456789abcdef" * 2
_API_PATH = re.compile(r"^/api/2\.[0-9]/(?P<endpoint>.+)$")
_ENDPOINT_PATH = re.compile(r"^serving-endpoints/(?P<name>[^/]+)(?P<config>/config)?$")
_MONITOR_PATH = re.compile(r"^unity-catalog/tables/(?P<table>[^/]+)/monitor(?P<rest>/refreshes(?:/\d+)?)?$")


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body) if self.body else {}


class ApiError(Exception):
    def __init__(self, status, error_code, message, headers=None):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers or {}


class DatabricksApi:
    """State and behaviour of the fake workspace; the HTTP handler only routes to it."""

    def __init__(self, token=FAKE_TOKEN):
        self.token = token
        self.url = ""
        self.requests = []
        self.unhandled = []
        # Lakehouse Monitoring: table full name -> monitor, and its refreshes.
        self.monitors = {}
        self.refreshes = {}
        self.refresh_outcome = ("SUCCESS", "")
        # Model Serving: endpoint name -> its details, as GET returns them.
        self.endpoints = {}
        self._next_id = 100
        self._failures = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------ test controls

    def calls(self, endpoint_suffix, method=None):
        """Recorded API requests whose path ends with ``endpoint_suffix``."""
        return [request for request in self.requests
                if request.path.endswith(endpoint_suffix) and method in (None, request.method)]

    # ------------------------------------------------------------ dispatch

    def handle(self, request: RecordedRequest):
        """(status, headers, body bytes) for one request."""
        with self._lock:
            self.requests.append(request)
            try:
                if request.path == "/.well-known/databricks-config":
                    return self._json(200, {"workspace_id": WORKSPACE_ID,
                                            "oidc_endpoint": f"{self.url}/oidc"})
                self._authenticate(request.headers)
                match = _API_PATH.match(request.path)
                if not match:
                    raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for {request.path}")
                return self._route(request, match["endpoint"])
            except ApiError as error:
                return self._json(error.status, {"error_code": error.error_code, "message": error.message},
                                  error.headers)

    def _authenticate(self, headers):
        if headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")

    def _route(self, request, endpoint):
        serving = _ENDPOINT_PATH.match(endpoint)
        if serving is not None:
            body = json.loads(request.body) if request.body else {}
            return self._json(200, self._serving_endpoint(request.method, serving["name"],
                                                          bool(serving["config"]), body))
        monitor = _MONITOR_PATH.match(endpoint)
        if monitor is None:
            self.unhandled.append(request)
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {request.path}'")
        body = json.loads(request.body) if request.body else {}
        return self._json(200, self._quality_monitor(request.method, monitor["table"], monitor["rest"], body))

    @staticmethod
    def _json(status, payload, headers=None):
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()

    # ------------------------------------------------------------ Lakehouse Monitoring

    def _quality_monitor(self, method, table, rest, body):
        """``quality_monitors`` get, create, update, run_refresh and get_refresh of one table."""
        monitor = self.monitors.get(table)
        if method == "POST" and not rest:
            if monitor is not None:
                raise ApiError(409, "RESOURCE_ALREADY_EXISTS", f"Monitor already exists for table {table}")
            short = table.rsplit(".", 1)[-1]
            schema = body["output_schema_name"]
            self.monitors[table] = {**body, "table_name": table, "status": "MONITOR_STATUS_ACTIVE",
                                    "monitor_version": 1,
                                    "profile_metrics_table_name": f"{schema}.{short}_profile_metrics",
                                    "drift_metrics_table_name": f"{schema}.{short}_drift_metrics"}
            return self.monitors[table]
        if monitor is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Monitor for table {table} does not exist")
        if not rest:
            if method == "PUT":
                monitor.update(body, monitor_version=monitor["monitor_version"] + 1)
            return monitor
        refreshes = self.refreshes.setdefault(table, [])
        if method == "POST":
            self._next_id += 1
            refreshes.append({"refresh_id": self._next_id, "state": "PENDING", "trigger": "MANUAL",
                              "start_time_ms": int(time.time() * 1000)})
            return refreshes[-1]
        refresh_id = int(rest.rsplit("/", 1)[-1])
        refresh = next((item for item in refreshes if item["refresh_id"] == refresh_id), None)
        if refresh is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Refresh {refresh_id} does not exist")
        # Each read moves the refresh on: PENDING, RUNNING, then the configured outcome.
        if refresh["state"] == "PENDING":
            refresh["state"] = "RUNNING"
        elif refresh["state"] == "RUNNING":
            refresh["state"], refresh["message"] = self.refresh_outcome
            refresh["end_time_ms"] = int(time.time() * 1000)
        return refresh

    # ------------------------------------------------------------ Model Serving

    def _serving_endpoint(self, method, name, config, body):
        """``serving_endpoints`` get and update_config of one endpoint."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST",
                           f"Serving endpoint with name '{name}' does not exist")
        if method == "PUT" and config:
            if endpoint["state"]["config_update"] == "IN_PROGRESS":
                raise ApiError(409, "RESOURCE_CONFLICT", f"Endpoint {name} is currently being updated")
            endpoint["pending_config"] = {"served_entities": body.get("served_entities", []),
                                          "traffic_config": body.get("traffic_config", {})}
            endpoint["state"]["config_update"] = "IN_PROGRESS"
        return endpoint


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one packet; otherwise delayed ACKs add ~40 ms to every request.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    api: DatabricksApi = None

    def _serve(self):
        parsed = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = {key: values[-1] for key, values in urllib.parse.parse_qs(parsed.query).items()}
        request = RecordedRequest(self.command, parsed.path, query,
                                  {key.lower(): value for key, value in self.headers.items()}, body)
        status, headers, payload = self.api.handle(request)
        self.send_response(status)
        for key, value in headers.items():
            if key != "Content-Length":
                self.send_header(key, value)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(payload))))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = do_PATCH = _serve

    def log_message(self, format, *args):
        # The SDK's requests are asserted through DatabricksApi.requests, not stderr.
        pass


class DatabricksApiServer:
    """Runs a DatabricksApi on 127.0.0.1 at a free port until stopped."""

    def __init__(self, api=None):
        self.api = api or DatabricksApi()
        handler = type("BoundHandler", (_Handler,), {"api": self.api})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.api.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="databricks-api", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self.api

    def __exit__(self, *exc_info):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def isolate_databricks_config(monkeypatch, tmp_path):
    """No DATABRICKS_* variable and no ~/.databrickscfg may leak into a test's client."""
    import os

    for name in list(os.environ):
        if name.startswith("DATABRICKS_") or name.startswith("ARM_") or name.startswith("AZURE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-such-databrickscfg"))


@pytest.fixture
def databricks_api(monkeypatch, tmp_path):
    """A running fake Databricks workspace; ``.url`` and ``.token`` authenticate against it."""
    isolate_databricks_config(monkeypatch, tmp_path)
    with DatabricksApiServer() as api:
        yield api
