"""Where a version's reference profile is kept: an artifact of its MLflow run, and the baseline table."""
import logging

import mlflow

from mlops.monitoring.monitor import write_baseline
from mlops.monitoring.reference import ARTIFACT_PATH as REFERENCE_ARTIFACT
from mlops.monitoring.reference import ReferenceProfile

logger = logging.getLogger(__name__)


def store_reference(run, reference: ReferenceProfile, mlflow_run_id: str) -> None:
    """The profile as an artifact of ``mlflow_run_id`` and, on Delta, in the baseline table."""
    mlflow.MlflowClient().log_text(mlflow_run_id, reference.to_json(), REFERENCE_ARTIFACT)
    if run.tables.table_format == "delta":
        write_baseline(run.tables, run.config.predictions_table, reference)
    else:
        logger.warning("table_format %s: the reference profile is kept as the MLflow artifact %s only; "
                       "monitoring needs Delta tables", run.tables.table_format, REFERENCE_ARTIFACT)
