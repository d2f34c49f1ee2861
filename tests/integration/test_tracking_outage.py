"""The MLflow tracking server fails or dies: calls retry a bounded number of times, and a job
fails soon with a message naming the server.

A real ``mlflow server`` (sqlite store, served artifacts) runs on loopback; the job runs as
``mlops job run`` against it. Once the train task's MLflow run exists on the server, the
server is killed. The job must end non-zero within a bounded time, not hang in retries,
with a message naming the tracking URI. A loopback server that answers every request with
one status shows which errors MLflow's client retries, and how often.
"""
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from mlops.lifecycle import tracking
from mlops.config import TrainingConfig
from mlops.errors import RegistryError
from support.appinsights import closed_loopback_port
from support.jobs import (TRAINING_JOB, new_home, only_run_record, start_job_process, stop_process_group,
                          task_states, training_parameters)
from support.jobs import training_trips  # noqa: F401
from support.spark_cluster import free_port, log_tail

pytestmark = pytest.mark.slow

EXPERIMENT = "/Shared/taxi_fares_outage"
SERVER_STARTUP_SECONDS = 120
RUN_APPEARS_SECONDS = 400
# A behaviour bound, not a benchmark: MLflow's own retries would otherwise take minutes per call.
FAILS_WITHIN_SECONDS = 240
# A failing call that gives up instead of hanging does so well within this.
HANG_LIMIT_SECONDS = 120


class MlflowServer:
    """``mlflow server`` on 127.0.0.1, in its own process group so it can be killed whole."""

    def __init__(self, folder):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = folder / "mlflow-server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                   "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)

    def get(self, endpoint, **query):
        url = f"{self.uri}/{endpoint}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())

    def post(self, endpoint, payload):
        request = urllib.request.Request(f"{self.uri}/{endpoint}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"{}")

    def wait_until_healthy(self):
        wait_for(self._healthy, SERVER_STARTUP_SECONDS,
                 lambda: f"mlflow server did not start; log:\n{log_tail(self.log_path)}", self.process)

    def task_run_exists(self, experiment_name, task) -> bool:
        try:
            experiment = self.get("api/2.0/mlflow/experiments/get-by-name",
                                  experiment_name=experiment_name)["experiment"]
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return False
            raise
        runs = self.post("api/2.0/mlflow/runs/search",
                         {"experiment_ids": [experiment["experiment_id"]],
                          "filter": f"tags.task = '{task}'"}).get("runs", [])
        return bool(runs)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def kill(self):
        stop_process_group(self.process)


def wait_for(condition, timeout_seconds, explain, process):
    """Poll ``condition`` until true; fail early when ``process`` ends before it is."""
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(explain())
        time.sleep(0.5)


class _SameAnswer(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        self.server.requests.append(self.path)
        body = json.dumps({"error_code": self.server.error_code, "message": "refused by the test server"})
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture
def default_http_retries(monkeypatch):
    """MLflow's HTTP retry variables unset now, and restored after the test."""
    for name in tracking.HTTP_RETRY_DEFAULTS:
        # setenv first, so that monkeypatch restores the variable even if it was not set.
        monkeypatch.setenv(name, "unset")
        monkeypatch.delenv(name)


@pytest.fixture
def answering(default_http_retries):
    """``answering(status, error_code)`` -> a loopback server giving every request that answer;
    MLflow's retry settings are the ones :func:`mlops.lifecycle.tracking.bound_http_retries` sets."""
    tracking.bound_http_retries()
    servers = []

    def start(status, error_code):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _SameAnswer)
        server.status, server.error_code, server.requests = status, error_code, []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_transient_answer_is_retried_a_bounded_number_of_times(answering, status):
    server, uri = answering(status, "TEMPORARILY_UNAVAILABLE")
    with pytest.raises(MlflowException):
        mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("any")
    assert len(server.requests) == 1 + int(tracking.HTTP_RETRY_DEFAULTS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])


@pytest.mark.parametrize("status, error_code", [(400, "INVALID_PARAMETER_VALUE"), (403, "PERMISSION_DENIED")])
def test_a_permanent_answer_is_not_retried(answering, status, error_code):
    server, uri = answering(status, error_code)
    with pytest.raises(MlflowException, match="refused by the test server"):
        mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name("any")
    assert len(server.requests) == 1


@pytest.mark.timeout(HANG_LIMIT_SECONDS)
def test_configure_against_a_closed_port_names_the_uri_instead_of_hanging(
        monkeypatch, mlops_home, default_http_retries):
    uri = f"http://127.0.0.1:{closed_loopback_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        with pytest.raises(RegistryError, match=f"^MLflow tracking server at {uri} is unreachable "
                                                r"\(after 3 retries\): MlflowException: API request to "):
            tracking.configure(TrainingConfig.from_params({}))
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    try:
        server.wait_until_healthy()
        yield server
    finally:
        server.kill()


def test_a_tracking_server_killed_mid_job_fails_the_job_quickly_naming_its_uri(
        mlflow_server, training_trips, tmp_path):  # noqa: F811
    home = new_home(tmp_path, training_trips)
    stdout_path, stderr_path = tmp_path / "job.out", tmp_path / "job.err"
    with open(stdout_path, "w") as stdout, open(stderr_path, "w") as stderr:
        job = start_job_process(TRAINING_JOB, home, training_parameters(experiment_name=EXPERIMENT),
                                stdout, stderr, extra_env={"MLFLOW_TRACKING_URI": mlflow_server.uri})
    try:
        wait_for(lambda: mlflow_server.task_run_exists(EXPERIMENT, "train"), RUN_APPEARS_SECONDS,
                 lambda: f"the train task's MLflow run never appeared; job stderr:\n{log_tail(stderr_path)}",
                 job)
        mlflow_server.kill()
        try:
            job.wait(timeout=FAILS_WITHIN_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job still runs {FAILS_WITHIN_SECONDS}s after the tracking server died; "
                        f"stderr:\n{log_tail(stderr_path)}")
    finally:
        stop_process_group(job)

    err = stderr_path.read_text()
    assert job.returncode != 0
    unreachable = f"MLflow tracking server at {mlflow_server.uri} is unreachable"
    failure_lines = [line for line in err.splitlines()
                     if "ERROR mlops.orchestration: task train failed" in line]
    assert len(failure_lines) == 1 and unreachable in failure_lines[0], log_tail(stderr_path)
    record = only_run_record(home)
    assert task_states(record) == {"train": "FAILED", **{task: "UPSTREAM_FAILED" for task in (
        "validate", "deploy", "approval_needed", "request_approval")}}
    assert unreachable in record["tasks"]["train"]["error"]
