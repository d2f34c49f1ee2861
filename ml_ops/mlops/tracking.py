"""MLflow tracking and registry: where runs and models go, chosen by configuration."""
import logging
import os

import mlflow

from mlops.config import running_on_databricks
from mlops.errors import ConfigError

logger = logging.getLogger(__name__)

UNITY_CATALOG = "databricks-uc"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` wins; then Databricks; else the local sqlite store."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if running_on_databricks():
        return "databricks"
    from mlops.local.home import mlflow_tracking_uri

    return mlflow_tracking_uri()


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
    mlflow.set_tracking_uri(uri)
    registry = config.registry_uri or uri
    mlflow.set_registry_uri(registry)
    validate_model_name(config.registered_model_name, config.registry_uri)
    _ensure_experiment(uri, config.experiment_name)
    logger.info("MLflow tracking at %s, experiment %s", _describe(uri), config.experiment_name)
    return uri


def _ensure_experiment(uri, name):
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        # A local store keeps artifacts beside it rather than in the process's cwd.
        from mlops.local.home import mlflow_artifact_root

        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=mlflow_artifact_root().as_uri())
    mlflow.set_experiment(name)


def _describe(uri: str) -> str:
    return uri.split("?")[0]
