"""Where a version's reference profile is kept: artifacts of its MLflow run, and the baseline table."""
import mlflow

from mlops.data.tables import TableStore
from mlops.monitoring.estimation import ARTIFACT_PATH as ERROR_MODEL_ARTIFACT
from mlops.monitoring.monitor import write_baseline
from mlops.monitoring.reference import ARTIFACT_PATH as REFERENCE_ARTIFACT
from mlops.monitoring.reference import ReferenceProfile


def store_reference(tables: TableStore, predictions_table: str, reference: ReferenceProfile,
                    mlflow_run_id: str) -> None:
    """The profile as an artifact of ``mlflow_run_id`` and in ``predictions_table``'s baseline table."""
    client = mlflow.MlflowClient()
    client.log_text(mlflow_run_id, reference.to_json(), REFERENCE_ARTIFACT)
    if reference.error_model:
        client.log_dict(mlflow_run_id, reference.error_model, ERROR_MODEL_ARTIFACT)
    write_baseline(tables, predictions_table, reference)
