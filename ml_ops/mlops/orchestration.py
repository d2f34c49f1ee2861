"""The run context of one notebook task: MLflow run, telemetry, temp files, failure handling.

Notebooks open one ``task_run`` and call one function per stage inside it.
Everything that must happen on failure happens here, once:

* the MLflow run ends FAILED with an ``error`` tag (and ``error_stage``);
* telemetry records the exception and is flushed;
* the task's temporary folder is removed;
* one line names the task, the stage and the cause, and the redacted traceback follows;
* the error propagates, so the task exits non-zero.

A stage's failure to reach the MLflow tracking server is reported as such, naming the
server (:func:`mlops.lifecycle.tracking.tracking_server`), and the run is then only ended locally.
"""
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import mlflow

from mlops import platform
from mlops.data.tables import TableStore
from mlops.errors import StageFailed
from mlops.lifecycle import tracking
from mlops.observability.redaction import public_uri, redact_params, redact_text
from mlops.observability.telemetry import CONNECTION_STRING_ENV, Telemetry, TelemetrySettings
from mlops.stages.run import TaskRun

logger = logging.getLogger(__name__)

MAX_FAILURE_LINE = 1000
# MLflow limits tag values to 5000 characters.
MAX_ERROR_TAG = 4900
# Task temp folders are named after their process, so those of a killed process can be found.
TEMP_PREFIX = "mlops-task-"


def _connection_string(host, config, dbutils):
    return host.read_secret(dbutils, config.appinsights_secret_scope, config.appinsights_secret_key,
                            CONNECTION_STRING_ENV, ("appinsights_secret_scope", "appinsights_secret_key"))


def _git_commit(config):
    if config.git_commit:
        return config.git_commit
    if os.environ.get("BUILD_SOURCEVERSION"):
        return os.environ["BUILD_SOURCEVERSION"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def remove_temp_dirs_of(pid: int) -> list[Path]:
    """Remove the task temp folders that process ``pid`` left (it was killed); returns them."""
    left = sorted(Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}{pid}-*"))
    for folder in left:
        shutil.rmtree(folder, ignore_errors=True)
    return left


@contextlib.contextmanager
def task_run(task, config, spark, dbutils, mlflow_run=True):
    """Open the run context of notebook task ``task``; see the module docstring."""
    host = platform.current()
    job = host.run_context(dbutils, task)
    dimensions = {"job_run_id": job.job_run_id, "task": task, "env": config.env,
                  "model_name": config.registered_model_name}
    telemetry_file = host.telemetry_file(job.job_run_id, task)
    telemetry_file.parent.mkdir(parents=True, exist_ok=True)
    settings = TelemetrySettings(
        connection_string=_connection_string(host, config, dbutils),
        role_name=f"{job.job_name}/{task}", jsonl_path=telemetry_file, dimensions=dimensions,
        backend=config.telemetry_backend)
    temp_dir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-{task}-"))
    tables = TableStore(spark, config.table_location, host)
    telemetry = Telemetry.start(settings)
    run = TaskRun(task=task, config=config, spark=spark, dbutils=dbutils, tables=tables,
                  telemetry=telemetry, temp_dir=temp_dir, job=job, host=host)
    try:
        with contextlib.ExitStack() as stack:
            if mlflow_run:
                stack.enter_context(_mlflow_run(run))
            yield run
    except BaseException as error:
        telemetry.record_exception(error)
        _report_failure(task, error)
        raise
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
        telemetry.close()


def failure_line(task, error) -> str:
    """One line naming the task, the failed stage (when a stage failed) and the cause."""
    if isinstance(error, StageFailed):
        where, cause = f"task {task} failed in stage '{error.stage}'", error.cause
    else:
        where, cause = f"task {task} failed", error
    text = " ".join(redact_text(f"{type(cause).__name__}: {cause}").split())
    if len(text) > MAX_FAILURE_LINE:
        text = text[:MAX_FAILURE_LINE] + " [...]"
    return f"{where}: {text}"


def _report_failure(task, error):
    """The failure line as a log record (stderr and telemetry), then the redacted traceback.

    The traceback goes to stderr only: telemetry already holds it as the exception item.
    """
    logger.error("%s", failure_line(task, error))
    sys.stderr.write(redact_text("".join(traceback.format_exception(error))))
    sys.stderr.flush()


@contextlib.contextmanager
def _mlflow_run(run: TaskRun):
    """One MLflow run per task; it ends FAILED with an ``error`` tag when the task fails."""
    uri = tracking.configure(run.config)
    tags = {"task": run.task, "job_name": run.job.job_name, "job_run_id": run.job.job_run_id,
            "env": run.config.env, "git_commit": _git_commit(run.config)}
    with tracking.tracking_server(uri):
        active = mlflow.start_run(run_name=f"{run.job.job_name}/{run.task}",
                                  tags=redact_params(tags))
    try:
        run.mlflow_run_id = active.info.run_id
        run.annotate(mlflow_run_id=active.info.run_id,
                     mlflow_experiment_id=active.info.experiment_id)
        with tracking.tracking_server(uri):
            mlflow.log_params(run.config.as_params())
        logger.info("MLflow run %s at %s", active.info.run_id, public_uri(uri))
        yield active
    except BaseException as error:
        _end_failed_run(run, error)
        raise
    with tracking.tracking_server(uri):
        _log_stage_durations(run)
        mlflow.end_run()


def _log_stage_durations(run: TaskRun):
    if run.stage_durations:
        mlflow.log_metrics({f"stage_seconds_{name}": seconds
                            for name, seconds in run.stage_durations.items()})


def _end_failed_run(run: TaskRun, error: BaseException):
    """End the run FAILED, tagged with the error; never let this hide the task's own error.

    When the tracking server itself is unreachable, only the local end of the run is done:
    waiting for more retries would not bring the server back.
    """
    if tracking.unreachable_uri(error) is None:
        tags = {"error": redact_text(f"{type(error).__name__}: {error}")[:MAX_ERROR_TAG]}
        if isinstance(error, StageFailed):
            tags["error_stage"] = error.stage
        _best_effort("tag the MLflow run with its error", mlflow.set_tags, tags)
        _best_effort("log stage durations", _log_stage_durations, run)
    _best_effort("end the MLflow run as FAILED", mlflow.end_run, "FAILED")


def _best_effort(action, function, *args):
    try:
        function(*args)
    except Exception as failure:
        logger.warning("could not %s: %s: %s", action, type(failure).__name__,
                       " ".join(redact_text(failure).split())[:MAX_FAILURE_LINE])
