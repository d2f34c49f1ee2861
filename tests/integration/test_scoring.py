"""The batch scoring job end to end: job file -> notebook -> stages, publishing to a real Azurite."""
import datetime
import json

import mlflow
import pyarrow.parquet as pq
import pytest
from azure.storage.blob import BlobServiceClient

from mlops.local.azurite import ACCOUNT_KEY
from support.azurite import azurite  # noqa: F401
from support.jobs import home_tracking_uri
from support.spark_cluster import SCORING_JOB, new_scoring_home, run_job_process

pytestmark = pytest.mark.slow

START, END = datetime.date(2016, 2, 1), datetime.date(2016, 2, 3)


@pytest.fixture(scope="module")
def scoring_home(spark, tmp_path_factory):
    return new_scoring_home(spark, tmp_path_factory, "scoring_job_home", 3000, START, END,
                            "taxi_fares_job_tests")


def blobs(azurite, container):  # noqa: F811
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        container_client = client.get_container_client(container)
        if not container_client.exists():
            return {}
        return {blob.name: container_client.download_blob(blob.name).readall()
                for blob in container_client.list_blobs()}


def test_scoring_job_scores_writes_and_publishes_to_azurite(scoring_home, azurite):  # noqa: F811
    home, parameters = scoring_home
    completed = run_job_process(SCORING_JOB, home, {**parameters, "blob_container": "job-scores"},
                                {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    published = blobs(azurite, "job-scores")
    manifests = [name for name in published if name.endswith("/_manifest.json")]
    assert len(manifests) == 1 and manifests[0].startswith(f"batch-scores/{START}_{END}/")
    manifest = json.loads(published[manifests[0]])
    table = home / "dbfs" / "mlops" / "taxi_fares" / "tables" / "taxi_fares_predictions"
    rows = pq.read_table(table).num_rows
    assert manifest["total_rows"] == rows > 2000
    store = home_tracking_uri(home)
    registered = mlflow.MlflowClient(tracking_uri=store, registry_uri=store).get_model_version(
        "taxi_fares_job_tests", "1")
    assert manifest["model"] == {"name": "taxi_fares_job_tests", "version": "1",
                                 "uri": "models:/taxi_fares_job_tests/1",
                                 "training_run_id": registered.run_id}
    assert len(published) == len(manifest["files"]) + 1
    assert ACCOUNT_KEY not in completed.stdout + completed.stderr
    run_records = list((home / "runs").glob("*.json"))
    assert [json.loads(path.read_text())["state"] for path in run_records] == ["SUCCESS"]


def test_scoring_job_with_a_bad_container_fails_and_publishes_nothing(scoring_home, azurite):  # noqa: F811
    home, parameters = scoring_home
    completed = run_job_process(SCORING_JOB, home, {**parameters, "blob_container": "Bad_Name"},
                                {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})

    assert completed.returncode == 1
    output = completed.stdout + completed.stderr
    assert "container name 'Bad_Name' is invalid" in output
    assert ACCOUNT_KEY not in output
