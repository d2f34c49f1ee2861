"""MLflow tracking and registry: where runs and models go, chosen by configuration.

MLflow's HTTP client retries transient failures (429, 5xx, refused or reset connections) with
exponential backoff. Its defaults (7 retries, backoff factor 2, 120 s timeout) keep a job
waiting for many minutes when the tracking server is down, so :func:`configure` bounds them
through MLflow's own environment variables, unless they are already set (see
:data:`HTTP_RETRY_DEFAULTS`). Permanent errors (other 4xx) are not retried by MLflow.

A failure to reach the tracking server is wrapped once, by :func:`tracking_server`, into a
:class:`~mlops.errors.RegistryError` that names the server's URI.
"""
import contextlib
import logging
import os
import sys

import mlflow
from mlflow import MlflowClient

from mlops import platform
from mlops.errors import ConfigError, RegistryError, exception_chain
from mlops.observability.redaction import public_uri, redact_text

logger = logging.getLogger(__name__)

UNITY_CATALOG = "databricks-uc"

# About 1 + 2 + 4 s of backoff over 3 retries: a dead server fails a call within seconds,
# while a restart or a burst of throttling still gets a few chances.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}

# requests raises these for refused, reset and timed-out connections; answers that keep failing
# (retries used up on 503s) are a RetryError instead, and are not called unreachable.
_CONNECTION_ERRORS_BY_MODULE = {
    "requests.exceptions": ("ConnectionError", "Timeout"),
}


def _sqlite_store(store_uri, artifact_uri=None):
    """MLflow's sqlite store, with its default artifact root in MLOPS_HOME rather than ``./mlruns``."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(store_uri, artifact_uri or platform.local_artifact_root().as_uri())


def local_store_defaults():
    """Make MLflow's sqlite store keep its artifact root in MLOPS_HOME, and create it quietly.

    MLflow creates ``./mlruns`` in the working directory each time it opens a sqlite store that
    was given no artifact root, which every ``MlflowClient`` is. Importing MLflow sets its schema
    migrations to log some fifty INFO lines per new store.
    """
    from mlflow.tracking._tracking_service import utils as tracking_service

    tracking_service._tracking_store_registry.register("sqlite", _sqlite_store)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


QUIET_LOGGERS = ("alembic", "mlflow.store.db.utils")
local_store_defaults()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` wins; then Databricks; else the local sqlite store."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return platform.default_tracking_uri()


def validate_model_name(name: str, registry_uri: str):
    """Unity Catalog needs ``catalog.schema.model``; the workspace registry takes plain names."""
    parts = name.split(".")
    if registry_uri == UNITY_CATALOG:
        if len(parts) != 3 or not all(parts):
            raise ConfigError(
                f"registered_model_name {name!r} must be catalog.schema.model "
                f"when registry_uri is {UNITY_CATALOG}")
    elif not name or "/" in name or ":" in name:
        raise ConfigError(f"registered_model_name {name!r} must be a plain model name")


def configure(config):
    """Point MLflow at the tracking store, registry and experiment of ``config``."""
    uri = tracking_uri()
    bound_http_retries()
    mlflow.set_tracking_uri(uri)
    registry = platform.current().registry_store(config.registry_uri, uri)
    mlflow.set_registry_uri(registry)
    validate_model_name(config.registered_model_name, config.registry_uri)
    with tracking_server(uri):
        _prepare_local_store(uri)
        _ensure_experiment(uri, config.experiment_name)
    check_registry(uri, registry)
    logger.info("MLflow tracking at %s, experiment %s", public_uri(uri), config.experiment_name)
    return uri


def _prepare_local_store(uri):
    """Create and migrate a sqlite store once, under a lock: two first runs would race its schema."""
    if uri.startswith("sqlite:"):
        with platform.named_lock("mlflow-store"):
            try:
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            except Exception as error:
                if "Can't locate revision" not in str(error):
                    raise
                # Alembic cannot migrate a schema downwards.
                raise ConfigError(
                    f"the MLflow store {uri} was written by a newer MLflow than this environment's "
                    f"{mlflow.__version__} (the version the cluster runtime ships); move it aside, or "
                    f"set MLOPS_HOME (or MLFLOW_TRACKING_URI) to a new folder") from None


def check_registry(tracking, registry):
    """Reach the model registry now, before any Spark work; RegistryError names it when it cannot."""
    try:
        MlflowClient(tracking_uri=tracking, registry_uri=registry).search_registered_models(max_results=1)
    except Exception as error:
        raise RegistryError(
            f"the model registry {public_uri(registry)} cannot be reached: {type(error).__name__}: "
            f"{' '.join(redact_text(error).split())[:500]}; check registry_uri and its credentials "
            "(DATABRICKS_HOST and a token or service principal for databricks-uc)") from error


def bound_http_retries():
    """Set MLflow's HTTP retry and timeout variables to :data:`HTTP_RETRY_DEFAULTS` unless set."""
    for name, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(name, value)


def is_unreachable(error) -> bool:
    """True when ``error`` (or an error it was raised from or while handling) is a failure to
    connect to, or to hear back from, a server: refused, reset or timed out."""
    classes = [ConnectionError, TimeoutError]
    for module_name, class_names in _CONNECTION_ERRORS_BY_MODULE.items():
        module = sys.modules.get(module_name)
        if module is not None:
            classes += [getattr(module, name) for name in class_names if hasattr(module, name)]
    return any(isinstance(link, tuple(classes)) for link in exception_chain(error))


def unreachable_uri(error):
    """The tracking URI named by an error :func:`tracking_server` raised, else None."""
    return next((getattr(link, "tracking_uri") for link in exception_chain(error)
                 if getattr(link, "tracking_uri", None)), None)


@contextlib.contextmanager
def tracking_server(uri=None):
    """Wrap a failure to reach the MLflow tracking server, once, into a RegistryError naming it.

    Other errors, connection errors that did not come through MLflow's client, and errors
    already wrapped here, pass through unchanged.
    """
    try:
        yield
    except Exception as error:
        if not _from_mlflow_client(error) or not is_unreachable(error) or unreachable_uri(error):
            raise
        shown = public_uri(uri or mlflow.get_tracking_uri())
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLflow's default number of")
        wrapped = RegistryError(
            f"MLflow tracking server at {shown} is unreachable (after {retries} retries): "
            f"{type(error).__name__}: {' '.join(redact_text(error).split())}")
        wrapped.tracking_uri = shown
        raise wrapped from error


def _from_mlflow_client(error):
    """Only MLflow's client talks to the tracking server; other connection errors are not its."""
    return any(isinstance(link, mlflow.exceptions.MlflowException) for link in exception_chain(error))


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def experiment_id(client, name: str) -> str:
    """The id of experiment ``name``, created first if missing (beside a local store's artifacts)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = platform.local_artifact_root().as_uri() if is_local_store(client.tracking_uri) else None
    return client.create_experiment(name, artifact_location=location)


def _ensure_experiment(uri, name):
    # A local store keeps artifacts beside it rather than in the process's cwd.
    experiment_id(MlflowClient(tracking_uri=uri), name)
    mlflow.set_experiment(name)


def end_runs_of_job_run(job_run_id: str, status: str = "KILLED") -> list[str]:
    """End, as ``status``, the MLflow runs still RUNNING that are tagged with ``job_run_id``."""
    client = MlflowClient(tracking_uri=tracking_uri())
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(experiments, filter_string=f"tags.job_run_id = '{job_run_id}' "
                                                         "and attributes.status = 'RUNNING'")
    for run in runs:
        client.set_terminated(run.info.run_id, status)
    return [run.info.run_id for run in runs]
