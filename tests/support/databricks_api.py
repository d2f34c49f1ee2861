"""A loopback HTTP server that plays the Databricks REST endpoints the deploy code calls.

The real databricks-sdk ``WorkspaceClient`` talks to it over HTTP, so tests exercise the
SDK's request building, authentication, error mapping and retries. It keeps the state a
workspace would (folders, notebooks, DBFS and Volume files, jobs, runs), records every
request, and can be told to answer with an error status a bounded number of times.

Endpoints: ``/.well-known/databricks-config`` (the SDK's host metadata probe), the OAuth
machine-to-machine endpoints ``/oidc/.well-known/oauth-authorization-server`` and
``/oidc/v1/token`` (client credentials of ``CLIENT_ID`` / ``CLIENT_SECRET``),
``workspace/{mkdirs,import,get-status,list}``,
``mlflow/experiments/{get-by-name,create}``, ``dbfs/{mkdirs,create,add-block,close,get-status,put}``,
``fs/directories`` and ``fs/files`` (Unity Catalog Volumes), ``jobs/{list,create,reset,get,run-now}``
``jobs/runs/get``, and Lakehouse Monitoring's ``unity-catalog/tables/{table}/monitor`` (get,
create, update) and ``.../monitor/refreshes`` (run, get) under API versions 2.0 to 2.2.
"""
import base64
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
CLIENT_ID = "5f3c1f0e-0000-4000-8000-00000000c1d0"
CLIENT_SECRET = "dose" + "0123456789abcdef" * 2
_API_PATH = re.compile(r"^/api/2\.[0-9]/(?P<endpoint>.+)$")
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
    def __init__(self, status, error_code, message, headers=None, oauth=False):
        super().__init__(message)
        self.oauth = oauth
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
        self.directories = {"/"}
        self.notebooks = {}
        # A workspace path is a folder, a notebook or an experiment: experiment path -> id.
        self.experiments = {}
        self.issued_tokens = set()
        self.dbfs_directories = {"/"}
        self.volume_directories = set()
        self.files = {}
        self.jobs = {}
        self.runs = {}
        self.run_result_state = "SUCCESS"
        self.run_life_cycle_state = "TERMINATED"
        # Lakehouse Monitoring: table full name -> monitor, and its refreshes.
        self.monitors = {}
        self.refreshes = {}
        self.refresh_outcome = ("SUCCESS", "")
        # Model Serving endpoints by name, and registered model aliases (name -> {alias: version}).
        self.endpoints = {}
        self.model_aliases = {}
        self._handles = {}
        self._next_id = 100
        self._failures = []
        self._lock = threading.RLock()

    # ------------------------------------------------------------ test controls

    def fail_next(self, status, times=1, path_prefix="/api/", message=None):
        """Answer the next ``times`` requests under ``path_prefix`` with HTTP ``status``."""
        with self._lock:
            self._failures.append([status, times, path_prefix, message])

    def calls(self, endpoint_suffix, method=None):
        """Recorded API requests whose path ends with ``endpoint_suffix``."""
        return [request for request in self.requests
                if request.path.endswith(endpoint_suffix) and method in (None, request.method)]

    def jobs_named(self, name):
        return {job_id: settings for job_id, settings in self.jobs.items() if settings.get("name") == name}

    # ------------------------------------------------------------ dispatch

    def handle(self, request: RecordedRequest):
        """(status, headers, body bytes) for one request."""
        with self._lock:
            self.requests.append(request)
            try:
                if request.path == "/.well-known/databricks-config":
                    return self._json(200, {"workspace_id": WORKSPACE_ID,
                                            "oidc_endpoint": f"{self.url}/oidc"})
                if request.path == "/oidc/.well-known/oauth-authorization-server":
                    return self._json(200, {"authorization_endpoint": f"{self.url}/oidc/v1/authorize",
                                            "token_endpoint": f"{self.url}/oidc/v1/token"})
                self._inject_failure(request.path)
                if request.path == "/oidc/v1/token":
                    return self._json(200, self._issue_token(request))
                self._authenticate(request.headers)
                match = _API_PATH.match(request.path)
                if not match:
                    raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for {request.path}")
                return self._route(request, match["endpoint"])
            except ApiError as error:
                body = {"error": error.error_code, "error_description": error.message} if error.oauth \
                    else {"error_code": error.error_code, "message": error.message}
                return self._json(error.status, body, error.headers)

    def _inject_failure(self, path):
        for failure in self._failures:
            status, remaining, prefix, message = failure
            if remaining > 0 and path.startswith(prefix):
                failure[1] -= 1
                code = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "REQUEST_LIMIT_EXCEEDED",
                        503: "TEMPORARILY_UNAVAILABLE"}.get(status, "INTERNAL_ERROR")
                # Retry-After 0 keeps the SDK's back-off short in tests.
                headers = {"Retry-After": "0"} if status in (429, 503) else {}
                raise ApiError(status, code, message or f"injected HTTP {status}", headers)

    def _authenticate(self, headers):
        accepted = {f"Bearer {token}" for token in {self.token, *self.issued_tokens}}
        if headers.get("authorization") not in accepted:
            raise ApiError(401, "UNAUTHENTICATED", "Invalid access token.")

    def _issue_token(self, request):
        """OAuth client credentials: HTTP Basic client id and secret, as the SDK sends them."""
        form = urllib.parse.parse_qs(request.body.decode())
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if form.get("grant_type") != ["client_credentials"] or \
                request.headers.get("authorization") != expected:
            raise ApiError(401, "invalid_client", "Client authentication failed", oauth=True)
        self._next_id += 1
        token = f"oauth-access-{self._next_id}"
        self.issued_tokens.add(token)
        return {"access_token": token, "token_type": "Bearer", "expires_in": 3600, "scope": "all-apis"}

    def _route(self, request, endpoint):
        body = request.body
        handlers = {
            ("POST", "workspace/mkdirs"): self._workspace_mkdirs,
            ("POST", "workspace/import"): self._workspace_import,
            ("GET", "workspace/get-status"): self._workspace_get_status,
            ("GET", "workspace/list"): self._workspace_list,
            ("GET", "mlflow/experiments/get-by-name"): self._experiment_by_name,
            ("POST", "mlflow/experiments/create"): self._experiment_create,
            ("POST", "dbfs/mkdirs"): self._dbfs_mkdirs,
            ("POST", "dbfs/create"): self._dbfs_create,
            ("POST", "dbfs/add-block"): self._dbfs_add_block,
            ("POST", "dbfs/close"): self._dbfs_close,
            ("POST", "dbfs/put"): self._dbfs_put,
            ("GET", "dbfs/get-status"): self._dbfs_get_status,
            ("GET", "jobs/list"): self._jobs_list,
            ("POST", "jobs/create"): self._jobs_create,
            ("POST", "jobs/reset"): self._jobs_reset,
            ("GET", "jobs/get"): self._jobs_get,
            ("POST", "jobs/run-now"): self._jobs_run_now,
            ("GET", "jobs/runs/get"): self._runs_get,
        }
        if endpoint.startswith("fs/directories/"):
            return self._volume_directory(request.method, "/" + endpoint[len("fs/directories/"):])
        if endpoint.startswith("fs/files/"):
            return self._volume_file(request.method, "/" + endpoint[len("fs/files/"):], request)
        if endpoint.startswith("serving-endpoints"):
            body = json.loads(request.body) if request.body else {}
            return self._json(200, self._serving_endpoint(request.method, endpoint.split("/")[1:], body))
        if endpoint.startswith("unity-catalog/models/") or endpoint == "mlflow/registered-models/get":
            name = request.query.get("name") or endpoint[len("unity-catalog/models/"):]
            return self._json(200, self._registered_model(name, uc=endpoint.startswith("unity-catalog")))
        monitor = _MONITOR_PATH.match(endpoint)
        if monitor:
            body = json.loads(request.body) if request.body else {}
            answer = self._quality_monitor(request.method, monitor["table"], monitor["rest"], body)
            return self._json(200, answer)
        handler = handlers.get((request.method, endpoint))
        if handler is None:
            self.unhandled.append(request)
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {request.path}'")
        arguments = request.query if request.method == "GET" else (json.loads(body) if body else {})
        return self._json(200, handler(arguments))

    @staticmethod
    def _json(status, payload, headers=None):
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()

    # ------------------------------------------------------------ workspace

    @staticmethod
    def _parents(path):
        parts = path.strip("/").split("/")
        return ["/" + "/".join(parts[:index]) for index in range(1, len(parts))]

    def _not_a_folder(self, path):
        """The first of ``path`` and its parents that is a notebook or an experiment, or None."""
        for candidate in self._parents(path) + [path]:
            if candidate in self.notebooks or candidate in self.experiments:
                return candidate
        return None

    def _workspace_mkdirs(self, body):
        path = body["path"].rstrip("/")
        blocking = self._not_a_folder(path)
        if blocking:
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"{blocking} exists and is not a directory")
        self.directories.update(self._parents(path) + [path])
        return {}

    def _experiment_by_name(self, query):
        name = query.get("experiment_name", "")
        if name not in self.experiments:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Node named '{name}' does not exist.")
        return {"experiment": {"experiment_id": self.experiments[name], "name": name,
                               "lifecycle_stage": "active"}}

    def _experiment_create(self, body):
        name = body.get("name", "")
        parent = name.rsplit("/", 1)[0] or "/"
        if name in self.experiments or name in self.directories or name in self.notebooks:
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"Node named '{name}' already exists")
        if parent not in self.directories:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Parent directory {parent} does not exist.")
        self._next_id += 1
        self.experiments[name] = str(self._next_id)
        return {"experiment_id": self.experiments[name]}

    def _workspace_import(self, body):
        path = body["path"]
        parent = path.rsplit("/", 1)[0] or "/"
        if parent not in self.directories:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"The parent folder ({parent}) does not exist.")
        if path in self.directories or path in self.experiments:
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"{path} exists and is not a notebook")
        if path in self.notebooks and not body.get("overwrite"):
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"{path} already exists.")
        self.notebooks[path] = {"content": base64.b64decode(body.get("content", "")),
                                "format": body.get("format"), "language": body.get("language")}
        return {}

    def _workspace_get_status(self, query):
        path = query["path"]
        if path in self.notebooks:
            return {"path": path, "object_type": "NOTEBOOK", "language": self.notebooks[path]["language"]}
        if path in self.directories:
            return {"path": path, "object_type": "DIRECTORY"}
        if path in self.experiments:
            return {"path": path, "object_type": "MLFLOW_EXPERIMENT"}
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Path ({path}) doesn't exist.")

    def _workspace_list(self, query):
        path = query["path"].rstrip("/")
        objects = [{"path": child, "object_type": "DIRECTORY"} for child in sorted(self.directories)
                   if child.rsplit("/", 1)[0] == path and child != path]
        objects += [{"path": child, "object_type": "NOTEBOOK", "language": notebook["language"]}
                    for child, notebook in sorted(self.notebooks.items()) if child.rsplit("/", 1)[0] == path]
        return {"objects": objects}

    # ------------------------------------------------------------ DBFS

    @staticmethod
    def _dbfs_key(path):
        return "dbfs:" + path if path.startswith("/") else path

    def _dbfs_mkdirs(self, body):
        path = body["path"].rstrip("/")
        self.dbfs_directories.update(self._parents(path) + [path])
        return {}

    def _dbfs_create(self, body):
        key = self._dbfs_key(body["path"])
        if key in self.files and not body.get("overwrite"):
            raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"A file or directory already exists at {key}.")
        self._next_id += 1
        self._handles[self._next_id] = (key, bytearray())
        return {"handle": self._next_id}

    def _open_handle(self, body):
        if body.get("handle") not in self._handles:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"unknown handle {body.get('handle')}")
        return self._handles[body["handle"]]

    def _dbfs_add_block(self, body):
        self._open_handle(body)[1].extend(base64.b64decode(body["data"]))
        return {}

    def _dbfs_close(self, body):
        key, data = self._open_handle(body)
        del self._handles[body["handle"]]
        self.files[key] = bytes(data)
        return {}

    def _dbfs_put(self, body):
        self.files[self._dbfs_key(body["path"])] = base64.b64decode(body.get("contents", ""))
        return {}

    def _dbfs_get_status(self, query):
        path = query["path"].rstrip("/") or "/"
        key = self._dbfs_key(path)
        if key in self.files:
            return {"path": path, "is_dir": False, "file_size": len(self.files[key])}
        if path in self.dbfs_directories:
            return {"path": path, "is_dir": True, "file_size": 0}
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No file or directory exists on path {path}.")

    # ------------------------------------------------------------ Volumes (Files API)

    def _volume_directory(self, method, path):
        path = urllib.parse.unquote(path).rstrip("/")
        if method == "PUT":
            self.volume_directories.update(self._parents(path) + [path])
            return 204, {}, b""
        if method == "HEAD":
            return (200 if path in self.volume_directories else 404), {}, b""
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"{method} is not supported on fs/directories")

    def _volume_file(self, method, path, request):
        path = urllib.parse.unquote(path)
        if method == "PUT":
            if path in self.files and request.query.get("overwrite") == "false":
                raise ApiError(409, "ALREADY_EXISTS", f"The file being created already exists: {path}")
            self.files[path] = request.body
            return 204, {}, b""
        if method in ("HEAD", "GET"):
            if path not in self.files:
                raise ApiError(404, "NOT_FOUND", f"The file {path} does not exist")
            data = self.files[path]
            return 200, {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}, \
                (data if method == "GET" else b"")
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"{method} is not supported on fs/files")

    # ------------------------------------------------------------ Model Serving and model aliases

    def _registered_model(self, name, uc):
        if name not in self.model_aliases:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Registered model {name} does not exist.")
        aliases = self.model_aliases[name]
        if uc:
            return {"full_name": name, "aliases": [{"alias_name": alias, "version_num": int(version)}
                                                   for alias, version in aliases.items()]}
        return {"registered_model": {"name": name, "aliases": [{"alias": alias, "version": version}
                                                               for alias, version in aliases.items()]}}

    def _serving_endpoint(self, method, parts, body):
        """create (POST), get (GET name), update config (PUT name/config), patch tags (PATCH name/tags)."""
        if method == "POST" and not parts:
            if body["name"] in self.endpoints:
                raise ApiError(400, "RESOURCE_ALREADY_EXISTS", f"Endpoint {body['name']} already exists.")
            self.endpoints[body["name"]] = {"name": body["name"], "config": body["config"],
                                            "tags": body.get("tags", []),
                                            "state": {"ready": "READY", "config_update": "NOT_UPDATING"}}
            return self.endpoints[body["name"]]
        endpoint = self.endpoints.get(parts[0]) if parts else None
        if endpoint is None:
            missing = parts[0] if parts else ""
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"Endpoint {missing} does not exist.")
        if method == "PUT" and parts[1:] == ["config"]:
            endpoint["config"] = body
        elif method == "PATCH" and parts[1:] == ["tags"]:
            kept = {tag["key"]: tag for tag in endpoint["tags"]}
            kept.update({tag["key"]: tag for tag in body.get("add_tags", [])})
            endpoint["tags"] = list(kept.values())
            return {"tags": endpoint["tags"]}
        return endpoint

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

    # ------------------------------------------------------------ jobs

    def _job(self, job_id):
        job_id = int(job_id)
        if job_id not in self.jobs:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Job {job_id} does not exist.")
        return job_id

    def _jobs_list(self, query):
        name = query.get("name")
        jobs = [{"job_id": job_id, "created_time": 0,
                 "settings": {key: value for key, value in settings.items()
                              if key not in ("tasks", "job_clusters", "parameters")}}
                for job_id, settings in sorted(self.jobs.items())
                if name is None or settings.get("name", "").lower() == name.lower()]
        return {"jobs": jobs, "has_more": False} if jobs else {"has_more": False}

    def _jobs_create(self, body):
        if not body.get("name"):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Job name is required.")
        self._next_id += 1
        self.jobs[self._next_id] = body
        return {"job_id": self._next_id}

    def _jobs_reset(self, body):
        self.jobs[self._job(body.get("job_id"))] = body["new_settings"]
        return {}

    def _jobs_get(self, query):
        job_id = self._job(query.get("job_id"))
        return {"job_id": job_id, "created_time": 0, "settings": self.jobs[job_id]}

    def _jobs_run_now(self, body):
        job_id = self._job(body.get("job_id"))
        self._next_id += 1
        self.runs[self._next_id] = {"job_id": job_id, "request": body, "start_time": int(time.time() * 1000)}
        return {"run_id": self._next_id, "number_in_job": self._next_id}

    def _runs_get(self, query):
        run_id = int(query.get("run_id"))
        if run_id not in self.runs:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist.")
        run = self.runs[run_id]
        failed = self.run_result_state != "SUCCESS"
        return {"run_id": run_id, "job_id": run["job_id"], "start_time": run["start_time"],
                "run_page_url": f"{self.url}/#job/{run['job_id']}/run/{run_id}",
                "state": {"life_cycle_state": self.run_life_cycle_state,
                          "result_state": self.run_result_state,
                          "state_message": "Task train failed" if failed else ""}}


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
