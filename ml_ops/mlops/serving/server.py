"""``mlops serve``: the Champion behind the MLflow scoring protocol, with feature lookup and logging.

Routes: ``POST /invocations`` (see :mod:`mlops.serving.payload`), ``GET /ping``, ``/health``,
``/version`` and ``/metrics`` (Prometheus text). Every scoring response names the version that
produced it in ``X-Model-Version`` (and the model in ``X-Model-Name``), the request's ids in
``X-Request-Id``, and how many rows fell back to default window features in
``X-Feature-Fallbacks``; with a traffic split or a shadow (:mod:`mlops.serving.split`), the arm
that answered in ``X-Model-Arm``. Bound to an address other than loopback, every route but ``/ping``
needs ``Authorization: Bearer <token>``, compared in constant time. The HTTP layer is
:mod:`mlops.serving.asgi` on uvicorn; this module routes and scores.
"""
import datetime
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np

from mlops.errors import ConfigError
from mlops.serving import request_log as logs
from mlops.serving.metrics import ServingMetrics
from mlops.serving.payload import feature_row, records_of
from mlops.inference.engine import CHALLENGER_ARM, SHADOW_ARM
from mlops.lifecycle.registry import CHALLENGER as CHALLENGER_ALIAS
from mlops.serving.split import TrafficSplit

logger = logging.getLogger(__name__)

ROUTES = {"/invocations": "POST", "/ping": "GET", "/health": "GET", "/version": "GET", "/metrics": "GET"}
OPEN_ROUTES = {"/ping"}
TOKEN_ENV = "MLOPS_SERVING_TOKEN"


@dataclass
class ServingOptions:
    alias: str = "Champion"
    max_body_bytes: int = 1 << 20
    token: str = ""
    # A body that has not arrived in time is refused (408), an answer that takes longer is 504.
    read_timeout: float = 5.0
    request_timeout: float = 10.0
    keep_alive_seconds: int = 5


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
                 telemetry=None, challenger_slot=None, split: TrafficSplit = TrafficSplit()):
        self.slot, self.store, self.request_log = slot, store, request_log
        self.options, self.metrics, self.telemetry = options, metrics, telemetry
        # The Challenger's slot when the traffic is split or shadowed; None serves the alias alone.
        self.challenger_slot, self.split = challenger_slot, split

    def answered(self, route: str, code: int, seconds: float) -> None:
        """Count the request, and hand it to telemetry, whose sampler keeps its share."""
        self.metrics.observe(route, code, seconds)
        if self.telemetry is not None:
            model = self.slot.current
            self.telemetry.track_request(route, seconds, code, route, ROUTES.get(route, "GET"),
                                         model_name=model.name, model_version=model.version, route=route)

    def route(self, method: str, path: str, body: bytes, content_type: str = "application/json",
              key: bytes = b"") -> tuple[int, dict, bytes]:
        if path not in ROUTES:
            message = f"no route {path}; routes: {', '.join(sorted(ROUTES))}"
            return _json(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": message})
        if method != ROUTES[path]:
            status, headers, payload = _json(405, {"error_code": "METHOD_NOT_ALLOWED",
                                                   "message": f"{path} takes {ROUTES[path]}, not {method}"})
            return status, {**headers, "Allow": ROUTES[path]}, payload
        if path == "/invocations":
            return self.invocations(body, content_type, key)
        if path == "/ping":
            return 200, {"Content-Type": "text/plain"}, b"\n"
        model = self.slot.current
        if path == "/version":
            return _json(200, {"model_name": model.name, "model_version": model.version,
                               "alias": self.options.alias})
        return _json(200, {"status": "ok", "model_name": model.name, "model_version": model.version,
                           "alias": self.options.alias, "loaded_at": model.loaded_at, **self._split_health(),
                           "not_loaded": self.slot.refused or None,
                           "feature_snapshot_version": self.store.version,
                           "log_rows_not_logged": self.request_log.dropped if self.request_log else 0,
                           "process_id": os.getpid()})

    def _split_health(self) -> dict:
        if self.challenger_slot is None:
            return {}
        return {"challenger_version": self.challenger_slot.current.version,
                "challenger_percent": self.split.challenger_percent, "shadow": self.split.shadow,
                "challenger_not_loaded": self.challenger_slot.refused or None}

    def invocations(self, body: bytes, content_type: str = "application/json",
                    key: bytes = b"") -> tuple[int, dict, bytes]:
        arm = self.split.arm_for(key or body) if self.challenger_slot is not None else None
        # One read per slot: a switch never changes the model under this request.
        model = (self.challenger_slot if arm == CHALLENGER_ARM else self.slot).current
        rows = [feature_row(record, index, model.feature_names, self.store)
                for index, record in enumerate(records_of(body, content_type))]
        matrix = np.array([[row.features[name] for name in model.feature_names] for row in rows], dtype=float)
        predictions = model.predict(matrix)
        ids = logs.new_request_ids(len(rows))
        fell_back = sum(bool(row.fell_back) for row in rows)
        self.metrics.fallbacks.inc(fell_back)
        if self.request_log is not None:
            scored_at, pickups = datetime.datetime.now(datetime.timezone.utc), [row.pickup for row in rows]
            alias = CHALLENGER_ALIAS if arm == CHALLENGER_ARM else self.options.alias
            self.request_log.add(logs.LoggedRequest(model.name, model.version, alias, scored_at, ids, matrix,
                                                    predictions, pickups, arm=arm))
            if self.split.shadow:
                shadow = self.challenger_slot.current
                self.request_log.add(logs.LoggedRequest(
                    shadow.name, shadow.version, CHALLENGER_ALIAS, scored_at, ids, matrix,
                    shadow.predict(matrix), pickups, arm=SHADOW_ARM))
        headers = {"X-Model-Name": model.name, "X-Model-Version": model.version,
                   "X-Request-Id": ",".join(request_id for _, request_id in ids[:100]),
                   "X-Feature-Fallbacks": str(fell_back)}
        if arm is not None:
            headers["X-Model-Arm"] = arm
        status, json_headers, payload = _json(200, {"predictions": predictions.tolist()})
        return status, {**json_headers, **headers}, payload


def _json(status: int, payload: dict) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(payload).encode()


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port``; ConfigError naming the address when it cannot be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on sockets that say TCP, and with
    # it on, a response's body waits for the client's delayed ACK of its headers (40 ms).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    return listener


class ServingServer:
    """A :class:`ServingApp` behind uvicorn on ``host``:``port`` (0: a free port), in a thread.

    :func:`mlops.serving.start.open_server` checks the token rule before anything is loaded.
    """

    def __init__(self, app: ServingApp, host: str, port: int):
        import uvicorn

        from mlops.serving.asgi import create_app

        self.app = app
        # log_config=None: the process keeps its own logging; requests are counted in /metrics.
        self._config = uvicorn.Config(create_app(app), host=host, port=port, log_config=None,
                                      access_log=False, lifespan="off", backlog=2048,
                                      timeout_keep_alive=app.options.keep_alive_seconds)
        # Bound now, so a taken port or an unusable host fails here, and port 0 is resolved.
        self._socket = listening_socket(host, port)
        self._server = uvicorn.Server(self._config)
        self.host, self.port = host, self._socket.getsockname()[1]
        self._thread = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "ServingServer":
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name="serving", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self):
        """Stop accepting requests, finish those in flight, then write every queued log row."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._socket.close()
        if self.app.request_log is not None:
            self.app.request_log.close()
