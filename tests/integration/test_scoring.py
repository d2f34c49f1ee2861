"""The batch scoring job end to end: job file -> notebook -> stages, publishing to a real Azurite."""
import concurrent.futures
import datetime
import json
import os
import subprocess
import sys

import mlflow
import pytest
from azure.storage.blob import BlobServiceClient
from deltalake import DeltaTable

from mlops.local.azurite import ACCOUNT_KEY
from support.azurite import azurite  # noqa: F401
from support.jobs import home_tracking_uri, job_settings_with_absolute_paths
from support.spark_cluster import SCORING_JOB, new_scoring_home, run_job_process

pytestmark = pytest.mark.slow

JANUARY = (datetime.date(2016, 1, 30), datetime.date(2016, 1, 31))
FEBRUARY = (datetime.date(2016, 2, 1), datetime.date(2016, 2, 2))
LOG = "taxi_fares_predictions"


@pytest.fixture(scope="module")
def scoring_home(spark, tmp_path_factory):
    return new_scoring_home(spark, tmp_path_factory, "scoring_job_home", 3000, JANUARY[0], FEBRUARY[1],
                            "taxi_fares_job_tests")


def blobs(azurite, container):  # noqa: F811
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        container_client = client.get_container_client(container)
        if not container_client.exists():
            return {}
        return {blob.name: container_client.download_blob(blob.name).readall()
                for blob in container_client.list_blobs()}


def score(home, parameters, months, azurite, container, job_file=SCORING_JOB):  # noqa: F811
    start, end = months
    completed = run_job_process(job_file, home, {**parameters, "blob_container": container,
                                                 "scoring_data_start_date": str(start),
                                                 "scoring_data_end_date": str(end)},
                                {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    assert ACCOUNT_KEY not in completed.stdout + completed.stderr
    return completed


def table_history(home):
    env = dict(os.environ, MLOPS_HOME=str(home))
    completed = subprocess.run([sys.executable, "-m", "mlops", "table", "history", LOG], env=env,
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return [line for line in completed.stdout.splitlines() if line.strip()[:1].isdigit()]


def test_each_scoring_run_appends_its_month_to_the_inference_log_and_publishes_its_rows(
        scoring_home, azurite, tmp_path):  # noqa: F811
    home, parameters = scoring_home
    log_folder = home / "tables" / "dev" / "taxi_fares" / LOG

    score(home, parameters, JANUARY, azurite, "job-scores")
    score(home, parameters, FEBRUARY, azurite, "job-scores")

    commits = table_history(home)
    log = DeltaTable(str(log_folder)).to_pyarrow_table().to_pandas()
    months = sorted({day.month for day in log["pickup_date"]})
    assert [" MERGE " in line for line in commits] == [True, False]
    assert "CREATE TABLE AS SELECT" in commits[1] and "Delta-Lake/" in commits[0]
    assert months == [1, 2]
    assert log.groupby("model_version")["request_id"].apply(lambda ids: ids.is_unique).all()
    published = blobs(azurite, "job-scores")
    manifests = {name: json.loads(body) for name, body in published.items()
                 if name.endswith("/_manifest.json")}
    assert sorted(name.split("/")[1] for name in manifests) == [f"{JANUARY[0]}_{JANUARY[1]}",
                                                                f"{FEBRUARY[0]}_{FEBRUARY[1]}"]
    per_run = log.groupby("job_run_id").size().to_dict()
    assert {manifest["scoring_run_id"]: manifest["total_rows"] for manifest in manifests.values()} == per_run
    store = home_tracking_uri(home)
    registered = mlflow.MlflowClient(tracking_uri=store, registry_uri=store).get_model_version(
        "taxi_fares_job_tests", "1")
    assert {json.dumps(manifest["model"], sort_keys=True) for manifest in manifests.values()} == {json.dumps(
        {"name": "taxi_fares_job_tests", "version": "1", "uri": "models:/taxi_fares_job_tests/1",
         "training_run_id": registered.run_id}, sort_keys=True)}
    assert len(published) == sum(len(manifest["files"]) + 1 for manifest in manifests.values())

    # Two runs of February at once (the job allowing it): Delta refuses the commit that lost the
    # race, it is merged again, and the log keeps one row per key.
    job_file = tmp_path / "scoring_twice_at_once.json"
    settings = job_settings_with_absolute_paths(SCORING_JOB)
    job_file.write_text(json.dumps({**settings, "max_concurrent_runs": 2}))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(score, home, parameters, FEBRUARY, azurite, "job-scores-again", job_file)
                for _ in range(2)]
        outputs = [run.result().stdout + run.result().stderr for run in runs]
    again = DeltaTable(str(log_folder)).to_pyarrow_table().to_pandas()
    assert len(again) == len(log)
    assert not again.duplicated(["request_id", "model_version"]).any()
    assert sorted(again["request_id"]) == sorted(log["request_id"])
    assert [" MERGE " in line for line in table_history(home)] == [True, True, True, False]
    february = again[again["pickup_date"].map(lambda day: day.month) == 2]
    assert february["job_run_id"].nunique() == 1 and february["job_run_id"].iloc[0] not in per_run
    states = [json.loads(path.read_text())["state"] for path in (home / "runs").glob("*.json")]
    assert states == ["SUCCESS"] * 4
    print("conflicts retried:", sum(output.count("commit refused") for output in outputs))


def test_scoring_job_with_a_bad_container_fails_and_publishes_nothing(scoring_home, azurite):  # noqa: F811
    home, parameters = scoring_home
    completed = run_job_process(SCORING_JOB, home, {**parameters, "blob_container": "Bad_Name"},
                                {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})

    assert completed.returncode == 1
    output = completed.stdout + completed.stderr
    assert "container name 'Bad_Name' is invalid" in output
    assert ACCOUNT_KEY not in output
