"""``mlops serve``: the Champion behind the MLflow scoring protocol, with feature lookup and logging.

Routes: ``POST /invocations`` (see :mod:`mlops.serving.payload`), ``GET /ping``, ``/health``,
``/version`` and ``/metrics`` (Prometheus text). Every scoring response names the version that
produced it in ``X-Model-Version`` (and the model in ``X-Model-Name``), the request's ids in
``X-Request-Id``, and how many rows fell back to default window features in
``X-Feature-Fallbacks``. Bound to an address other than loopback, every route but ``/ping``
needs ``Authorization: Bearer <token>``, compared in constant time.
"""
import datetime
import hmac
import ipaddress
import json
import logging
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from mlops.errors import ConfigError
from mlops.observability.redaction import redact_text
from mlops.serving import request_log as logs
from mlops.serving.metrics import ServingMetrics
from mlops.serving.payload import RequestError, feature_row, records_of

logger = logging.getLogger(__name__)

ROUTES = {"/invocations": "POST", "/ping": "GET", "/health": "GET", "/version": "GET", "/metrics": "GET"}
OPEN_ROUTES = {"/ping"}
TOKEN_ENV = "MLOPS_SERVING_TOKEN"


@dataclass
class ServingOptions:
    alias: str = "Champion"
    max_body_bytes: int = 1 << 20
    token: str = ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_token_off_loopback(host: str, token: str) -> None:
    if not is_loopback(host) and not token:
        raise ConfigError(f"serving on {host} (not loopback) needs a bearer token: set {TOKEN_ENV} or "
                          "pass --token-secret SCOPE/KEY; bind to 127.0.0.1 to serve without one")


class ServingApp:
    """What the HTTP handler calls: routing, scoring, logging and metrics; no socket code."""

    def __init__(self, slot, store, request_log, options: ServingOptions, metrics: ServingMetrics,
                 telemetry=None):
        self.slot, self.store, self.request_log = slot, store, request_log
        self.options, self.metrics, self.telemetry = options, metrics, telemetry

    def answered(self, route: str, code: int, seconds: float) -> None:
        """Count the request, and hand it to telemetry, whose sampler keeps its share."""
        self.metrics.observe(route, code, seconds)
        if self.telemetry is not None:
            model = self.slot.current
            self.telemetry.track_request(route, seconds, code, route, ROUTES.get(route, "GET"),
                                         model_name=model.name, model_version=model.version, route=route)

    def authorized(self, path: str, header: str) -> bool:
        if not self.options.token or path in OPEN_ROUTES:
            return True
        expected = f"Bearer {self.options.token}".encode()
        return hmac.compare_digest((header or "").encode(), expected)

    def route(self, method: str, path: str, body: bytes,
              content_type: str = "application/json") -> tuple[int, dict, bytes]:
        if path not in ROUTES:
            message = f"no route {path}; routes: {', '.join(sorted(ROUTES))}"
            return _json(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": message})
        if method != ROUTES[path]:
            status, headers, payload = _json(405, {"error_code": "METHOD_NOT_ALLOWED",
                                                   "message": f"{path} takes {ROUTES[path]}, not {method}"})
            return status, {**headers, "Allow": ROUTES[path]}, payload
        if path == "/invocations":
            return self.invocations(body, content_type)
        if path == "/ping":
            return 200, {"Content-Type": "text/plain"}, b"\n"
        if path == "/metrics":
            return 200, {"Content-Type": self.metrics.content_type}, self.metrics.render(self)
        model = self.slot.current
        if path == "/version":
            return _json(200, {"model_name": model.name, "model_version": model.version,
                               "alias": self.options.alias})
        return _json(200, {"status": "ok", "model_name": model.name, "model_version": model.version,
                           "alias": self.options.alias, "loaded_at": model.loaded_at,
                           "not_loaded": self.slot.refused or None,
                           "feature_snapshot_version": self.store.version,
                           "log_rows_not_logged": self.request_log.dropped if self.request_log else 0})

    def invocations(self, body: bytes, content_type: str = "application/json") -> tuple[int, dict, bytes]:
        model = self.slot.current  # one read: a switch never changes the model under this request
        rows = [feature_row(record, index, model.feature_names, self.store)
                for index, record in enumerate(records_of(body, content_type))]
        matrix = np.array([[row.features[name] for name in model.feature_names] for row in rows], dtype=float)
        predictions = model.predict(matrix)
        ids = logs.new_request_ids(len(rows))
        fell_back = sum(bool(row.fell_back) for row in rows)
        self.metrics.fallbacks.inc(fell_back)
        if self.request_log is not None:
            self.request_log.add(logs.LoggedRequest(
                model.name, model.version, self.options.alias, datetime.datetime.now(datetime.timezone.utc),
                ids, matrix, predictions, [row.pickup for row in rows]))
        headers = {"X-Model-Name": model.name, "X-Model-Version": model.version,
                   "X-Request-Id": ",".join(request_id for _, request_id in ids[:100]),
                   "X-Feature-Fallbacks": str(fell_back)}
        status, json_headers, payload = _json(200, {"predictions": predictions.tolist()})
        return status, {**json_headers, **headers}, payload


def _json(status: int, payload: dict) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


class _Handler(BaseHTTPRequestHandler):
    app: ServingApp = None
    protocol_version = "HTTP/1.1"
    # Headers and body in one packet; without it delayed ACKs add tens of milliseconds.
    disable_nagle_algorithm, wbufsize = True, 1 << 16

    def _serve(self):
        started = time.perf_counter()
        path = self.path.split("?", 1)[0]
        status, headers, payload = self._answer(path)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        # Unknown paths share one label: a scanner must not grow the metrics without bound.
        self.app.answered(path if path in ROUTES else "other", status, time.perf_counter() - started)

    def _answer(self, path):
        app = self.app
        if not app.authorized(path, self.headers.get("Authorization")):
            status, headers, payload = _json(401, {"error_code": "UNAUTHENTICATED",
                                                   "message": "a valid bearer token is required"})
            return status, {**headers, "WWW-Authenticate": "Bearer"}, payload
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return _json(400, {"error_code": "BAD_REQUEST", "message": "Content-Length is not a number"})
        if length > app.options.max_body_bytes:
            self.close_connection = True
            limit = app.options.max_body_bytes
            return _json(413, {"error_code": "REQUEST_TOO_LARGE",
                               "message": f"the body has {length} bytes; the limit is {limit}"})
        body = self.rfile.read(length) if length else b""
        try:
            return app.route(self.command, path, body, self.headers.get("Content-Type") or "application/json")
        except RequestError as error:
            return _json(error.status, {"error_code": "BAD_REQUEST", "message": str(error)})
        except Exception as error:  # no input may crash the server; the client learns it was ours
            logger.exception("request to %s failed", path)
            if app.telemetry is not None:
                app.telemetry.record_exception(error, route=path)
            return _json(500, {"error_code": "INTERNAL_ERROR",
                               "message": redact_text(f"{type(error).__name__}: {error}")})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format, *args):
        # Requests are counted in /metrics; one log line per request would drown the server's own.
        pass


class _Listener(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when dozens of clients connect at once.
    request_queue_size = 256


class ServingServer:
    """The HTTP server around a :class:`ServingApp`, on ``host``:``port`` (0: a free port).

    :func:`mlops.serving.start.open_server` checks the token rule before anything is loaded.
    """

    def __init__(self, app: ServingApp, host: str, port: int):
        handler = type("BoundHandler", (_Handler,), {"app": app})
        self.app = app
        self.httpd = _Listener((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServingServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="serving", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop accepting requests, then write every queued log row."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.app.request_log is not None:
            self.app.request_log.close()
