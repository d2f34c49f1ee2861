"""The scoring job's stages against a real MLflow store, a local Spark and a real Azurite."""
import base64
import dataclasses
import json
import logging

import mlflow
from deltalake import DeltaTable
import pytest
from azure.storage.blob import BlobServiceClient

from mlops.local.azurite import ACCOUNT_KEY, ACCOUNT_NAME
from mlops.errors import ConfigError, DataError, PublishError, RegistryError, StageFailed, ValidationFailed
from mlops.local.dbutils import secret_env_name
from mlops.publishing import MANIFEST_NAME, BlobPublisher, FolderPublisher
from mlops.lifecycle.registry import RegistryClient
from mlops.stages import scoring
from mlops.platform import driver_path as to_local_path
from support.spark_cluster import free_port

from .conftest import MODEL_NAME, SCORING_END, SCORING_START, register, run_scoring_stages

RUN_PREFIX = f"batch/{SCORING_START}_{SCORING_END}/scoring-run-1/"
FAKE_KEY = base64.b64encode(b"not-the-real-key-" * 4).decode()


def blob_names(azurite, container, prefix=""):
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        container_client = client.get_container_client(container)
        if not container_client.exists():
            return []
        return sorted(blob.name for blob in container_client.list_blobs(name_starts_with=prefix))


def read_blob(azurite, container, name):
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        return client.get_blob_client(container, name).download_blob().readall()


def full_text(error):
    """The message of ``error`` and of every error it was raised from."""
    texts = []
    while error is not None:
        texts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


@pytest.fixture
def blob_storage(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return azurite


def fail_stage(scoring_run, config, cause_type):
    with pytest.raises(StageFailed) as caught:
        with scoring_run(config) as run:
            run_scoring_stages(run)
    assert isinstance(caught.value.cause, cause_type), full_text(caught.value)
    return caught.value


# ---------------------------------------------------------------- happy path and publishing

def test_scoring_writes_the_table_publishes_files_then_the_manifest_and_logs_a_summary(
        champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(blob_container="scores-happy")
    with scoring_run(config) as run:
        scored, published = run_scoring_stages(run)
        table_path = to_local_path(run.tables.uri(config.predictions_table))
        mlflow_run_id = run.mlflow_run_id
        task_values = dict(run.dbutils.task_values_set)

    names = blob_names(blob_storage, "scores-happy", RUN_PREFIX)
    manifest = json.loads(read_blob(blob_storage, "scores-happy", RUN_PREFIX + MANIFEST_NAME))
    log = DeltaTable(str(table_path)).to_pyarrow_table().to_pandas()
    this_run = log[log["mlflow_run_id"] == mlflow_run_id]

    assert scored.rows == len(this_run) > 2000
    assert this_run["request_id"].is_unique and (this_run["job_run_id"] == "scoring-run-1").all()
    assert len(names) == len(manifest["files"]) + 1 and RUN_PREFIX + MANIFEST_NAME in names
    assert manifest["total_rows"] == scored.rows == sum(entry["rows"] for entry in manifest["files"])
    assert all(entry["name"].startswith("pickup_date=2016-02-0") for entry in manifest["files"])
    assert manifest["model"]["version"] == champion and manifest["model"]["name"] == MODEL_NAME
    assert manifest["parameters"]["model_alias"] == "Champion"
    assert manifest["scoring_run_id"] == "scoring-run-1"
    assert published.url.endswith(f"/scores-happy/{RUN_PREFIX}")

    logged = mlflow.get_run(mlflow_run_id)
    assert logged.data.metrics["rows_scored"] == scored.rows
    assert 0 < logged.data.metrics["rmse"] < 10
    assert logged.data.tags["scoring.model_version"] == champion
    assert logged.data.tags["scoring.blob_url"] == published.url
    assert logged.data.params["resolved_model_version"] == champion
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(mlflow_run_id)}
    assert {"prediction_histogram.png", "scoring_summary.json"} <= artifacts
    assert task_values["model_version"] == champion and task_values["rows_scored"] == scored.rows
    assert task_values["blob_url"] == published.url
    assert ACCOUNT_KEY not in json.dumps(manifest) and ACCOUNT_KEY not in json.dumps(logged.data.params)


def test_rerun_of_the_same_run_id_replaces_only_its_own_prefix(
        champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(blob_container="scores-rerun")
    with scoring_run(config, job_run_id="other-run") as run:
        run_scoring_stages(run)
    other = blob_names(blob_storage, "scores-rerun", RUN_PREFIX.replace("scoring-run-1", "other-run"))
    with scoring_run(config) as run:
        run_scoring_stages(run)
    first = blob_names(blob_storage, "scores-rerun", RUN_PREFIX)
    with scoring_run(config) as run:
        run_scoring_stages(run)
    second = blob_names(blob_storage, "scores-rerun", RUN_PREFIX)

    # Each run writes new part files (new Spark job ids): the old ones must be gone, not added to.
    assert len(second) == len(first) and set(second) != set(first)
    assert blob_names(blob_storage, "scores-rerun", RUN_PREFIX.replace("scoring-run-1", "other-run")) == other
    assert len(other) == len(first)


def test_summary_of_a_run_whose_rows_a_concurrent_run_replaced_logs_counts_without_a_histogram(
        champion, scoring_config, scoring_run, caplog):
    config = scoring_config(blob_container="scores-replaced")
    with scoring_run(config) as run:
        scored, _ = run_scoring_stages(run)
        replaced = dataclasses.replace(scored, scoring_run_id="a-run-that-merged-later")
        with caplog.at_level(logging.WARNING, logger="mlops.stages.scoring"):
            summary = scoring.log_summary(run, replaced)
        binned = scoring.histograms(run, replaced)

    assert binned is None
    assert summary["rows_scored"] == 0 and "prediction_mean" not in summary
    assert "no inference log rows of this run remain" in caplog.text


def test_failure_mid_upload_leaves_no_manifest_and_a_rerun_completes(
        champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(blob_container="scores-crash")
    uploads = []

    def crash_on_third_file(name):
        uploads.append(name)
        if len(uploads) == 3:
            raise ConnectionResetError("simulated crash mid-upload")

    failure = None
    with pytest.raises(StageFailed) as caught:
        with scoring_run(config) as run:
            run_scoring_stages(run, before_upload=crash_on_third_file)
    failure = caught.value
    assert failure.stage == "publish" and isinstance(failure.cause, PublishError)
    assert "the manifest was not written" in str(failure)
    left = blob_names(blob_storage, "scores-crash", RUN_PREFIX)
    assert RUN_PREFIX + MANIFEST_NAME not in left

    with scoring_run(config) as run:
        scored, published = run_scoring_stages(run)
    manifest = json.loads(read_blob(blob_storage, "scores-crash", RUN_PREFIX + MANIFEST_NAME))
    assert manifest["total_rows"] == scored.rows
    assert len(blob_names(blob_storage, "scores-crash", RUN_PREFIX)) == len(manifest["files"]) + 1


def test_connection_string_from_a_secret_scope(champion, azurite, scoring_config, scoring_run, monkeypatch):
    monkeypatch.setenv(secret_env_name("storage", "blob-connection"), azurite.connection_string)
    config = scoring_config(blob_container="scores-secret", storage_secret_scope="storage",
                            storage_secret_key="blob-connection")
    with scoring_run(config) as run:
        with run.stage("check_publish_target", scoring.open_publish_target) as target:
            assert isinstance(target.publisher, BlobPublisher)
            assert (target.publisher.account, target.publisher.container) == (ACCOUNT_NAME, "scores-secret")
        logged_params = mlflow.get_run(run.mlflow_run_id).data.params

    # check_access created the container through the secret's connection string.
    assert blob_names(azurite, "scores-secret") == []
    with BlobServiceClient.from_connection_string(azurite.connection_string) as client:
        assert client.get_container_client("scores-secret").exists()
    assert ACCOUNT_KEY not in json.dumps(logged_params)


def test_without_a_connection_string_results_go_to_the_folder_with_a_warning(
        champion, scoring_config, scoring_run, caplog):
    config = scoring_config(blob_container="scores-folder", publish_folder="dbfs:/published")
    with caplog.at_level(logging.WARNING, logger="mlops.publishing"):
        with scoring_run(config) as run:
            with run.stage("check_publish_target", scoring.open_publish_target) as target:
                assert isinstance(target.publisher, FolderPublisher)

    assert "no blob storage connection string is configured" in caplog.text
    assert target.publisher.root == to_local_path("dbfs:/published").resolve() / "scores-folder"
    assert target.publisher.root.is_dir()


def test_publish_results_false_writes_the_table_and_publishes_nothing(
        champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(blob_container="scores-off", publish_results=False)
    with scoring_run(config) as run:
        scored, published = run_scoring_stages(run)

    assert published is None and scored.rows > 2000
    assert blob_names(blob_storage, "scores-off") == []


def test_model_version_is_pinned_at_the_start_of_the_run(scoring_home, booster, scoring_config, scoring_run):
    name = "taxi_fares_promoted"
    champion = register(booster, alias="Champion", name=name)
    newer = register(booster, name=name)
    config = scoring_config(registered_model_name=name, publish_results=False)
    with scoring_run(config) as run:
        model = run.stage("resolve_model", scoring.resolve_model)
        # A promotion while the run is in progress must not reach this run.
        RegistryClient(name).set_alias("Champion", newer)
        scored = run.stage("score", scoring.score_and_write, model)
        versions = run.tables.read(config.predictions_table).select("model_version").distinct().collect()

    assert newer != champion
    assert scored.model.version == champion
    assert [row.model_version for row in versions] == [champion]


def test_an_explicit_version_wins_over_the_alias(scoring_home, booster, scoring_config, scoring_run):
    name = "taxi_fares_explicit"
    older = register(booster, name=name)
    newer = register(booster, alias="Champion", name=name)
    config = scoring_config(registered_model_name=name, trained_model_version=older, publish_results=False)
    with scoring_run(config) as run:
        model = run.stage("resolve_model", scoring.resolve_model)

    assert (model.ref.version, model.resolved_from) == (older, "trained_model_version")
    assert newer != older


# ---------------------------------------------------------------- bad input: clear error, nothing published

def test_no_champion_and_no_version_given(scoring_home, booster, blob_storage, scoring_config, scoring_run):
    register(booster, name="taxi_fares_no_champion")
    config = scoring_config(registered_model_name="taxi_fares_no_champion", blob_container="scores-nochamp")
    failure = fail_stage(scoring_run, config, RegistryError)

    assert failure.stage == "resolve_model"
    assert ("model 'taxi_fares_no_champion' has no version with alias 'Champion' and "
            "trained_model_version is empty" in str(failure))
    assert blob_names(blob_storage, "scores-nochamp") == []


def test_a_model_that_was_never_registered(scoring_home, scoring_config, scoring_run):
    config = scoring_config(registered_model_name="taxi_fares_never_registered")
    failure = fail_stage(scoring_run, config, RegistryError)

    assert "model 'taxi_fares_never_registered' does not exist in the registry" in str(failure)
    assert "run the training job first" in str(failure)


def test_a_version_that_does_not_exist(champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(trained_model_version="99", blob_container="scores-noversion")
    failure = fail_stage(scoring_run, config, RegistryError)

    assert f"model '{MODEL_NAME}' version 99 does not exist" in str(failure)
    assert blob_names(blob_storage, "scores-noversion") == []


def test_a_version_that_is_not_a_number(champion, scoring_config, scoring_run):
    failure = fail_stage(scoring_run, scoring_config(trained_model_version="Champion"), ConfigError)

    assert "'trained_model_version' must be a version number such as 3, got 'Champion'" in str(failure)


def test_a_container_name_that_breaks_azure_rules(champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(blob_container="Bad_Container", predictions_table="never_written")
    failure = fail_stage(scoring_run, config, ConfigError)

    assert failure.stage == "check_publish_target"
    assert "container name 'Bad_Container' is invalid" in str(failure)
    assert not (to_local_path(config.table_location) / "never_written").exists()


@pytest.mark.parametrize("prefix", ["../escape", "batch/../../other", "batch/.."])
def test_a_prefix_with_dot_dot(champion, blob_storage, scoring_config, scoring_run, prefix):
    config = scoring_config(blob_container="scores-dotdot", blob_prefix=prefix)
    failure = fail_stage(scoring_run, config, ConfigError)

    assert failure.stage == "check_publish_target"
    assert f"prefix '{prefix}' is invalid: it must not contain '..'" in str(failure)
    assert blob_names(blob_storage, "scores-dotdot") == []


@pytest.mark.timeout(120)
def test_an_unreachable_blob_endpoint_fails_instead_of_hanging(
        champion, scoring_config, scoring_run, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}/{ACCOUNT_NAME}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={FAKE_KEY};"
                       f"BlobEndpoint={endpoint};")
    config = scoring_config(blob_container="scores-unreachable", predictions_table="never_written")
    failure = fail_stage(scoring_run, config, PublishError)

    assert failure.stage == "check_publish_target"
    assert f"account '{ACCOUNT_NAME}' container 'scores-unreachable'" in str(failure)
    assert "unreachable" in str(failure)
    assert FAKE_KEY not in full_text(failure)
    assert not (to_local_path(config.table_location) / "never_written").exists()


@pytest.mark.timeout(120)
def test_a_bad_key_fails_instead_of_hanging_without_printing_it(
        champion, azurite, scoring_config, scoring_run, monkeypatch, capsys, caplog):
    wrong = azurite.connection_string.replace(ACCOUNT_KEY, FAKE_KEY)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    config = scoring_config(blob_container="scores-badkey")
    failure = fail_stage(scoring_run, config, PublishError)

    assert f"account '{ACCOUNT_NAME}' container 'scores-badkey'" in str(failure)
    assert "authentication failed" in str(failure)
    captured = capsys.readouterr()
    for text in (full_text(failure), captured.out, captured.err, caplog.text):
        assert FAKE_KEY not in text
    assert blob_names(azurite, "scores-badkey") == []


def test_secret_scope_without_a_key_name(champion, scoring_config, scoring_run):
    failure = fail_stage(scoring_run, scoring_config(storage_secret_scope="storage"), ConfigError)

    assert "'storage_secret_scope' and 'storage_secret_key' must be set together" in str(failure)


def test_an_empty_scoring_range(champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(scoring_data_start_date="2015-06-01", scoring_data_end_date="2015-06-30",
                            blob_container="scores-empty", execute_feature_engineering=True,
                            table_location="dbfs:/tables")
    failure = fail_stage(scoring_run, config, DataError)

    assert failure.stage == "feature_engineering"
    assert "no trips between 2015-06-01 and 2015-06-30" in str(failure)
    assert blob_names(blob_storage, "scores-empty") == []


def test_an_empty_range_over_existing_feature_tables(champion, blob_storage, scoring_config, scoring_run):
    config = scoring_config(scoring_data_start_date="2016-03-01", scoring_data_end_date="2016-03-31",
                            blob_container="scores-empty-tables")
    failure = fail_stage(scoring_run, config, DataError)

    assert failure.stage == "score"
    assert "no trips to score between 2016-03-01 and 2016-03-31 in table scoring_trips" in str(failure)
    assert blob_names(blob_storage, "scores-empty-tables") == []


def test_a_wrong_schema(champion, spark, blob_storage, scoring_config, scoring_run, tmp_path):
    wrong = tmp_path / "wrong"
    spark.range(10).withColumnRenamed("id", "fare").write.parquet(str(wrong))
    config = scoring_config(taxi_fares_raw_data=str(wrong), blob_container="scores-schema",
                            execute_feature_engineering=True, table_location="dbfs:/tables")
    failure = fail_stage(scoring_run, config, DataError)

    assert "does not have the raw trip schema: column 'tpep_pickup_datetime' is missing" in str(failure)
    assert blob_names(blob_storage, "scores-schema") == []


@pytest.mark.parametrize("status", ["FAILED", "PENDING", None])
@pytest.mark.parametrize("pinned_by", ["alias", "trained_model_version"])
def test_scoring_refuses_a_version_not_passed(scoring_home, booster, scoring_config, scoring_run, status,
                                              pinned_by):
    name = f"taxi_fares_unvalidated_{pinned_by}_{status}".lower()
    version = register(booster, alias="Champion", name=name, status=status)
    extra = {"trained_model_version": version} if pinned_by == "trained_model_version" else {}
    config = scoring_config(registered_model_name=name, publish_results=False, **extra)
    failure = fail_stage(scoring_run, config, ValidationFailed)
    assert f"refusing to score with model '{name}' version {version}" in str(failure)
    assert f"its model_validation_status is {status or 'not set'}, not PASSED" in str(failure)
    assert "allow_unvalidated_model=true" in str(failure)


def test_allow_unvalidated_model_scores_and_tags_the_run(scoring_home, booster, scoring_config, scoring_run):
    name = "taxi_fares_allowed_unvalidated"
    version = register(booster, alias="Champion", name=name, status="FAILED")
    config = scoring_config(registered_model_name=name, publish_results=False, allow_unvalidated_model=True)
    with scoring_run(config) as run:
        model = run.stage("resolve_model", scoring.resolve_model)
        run_id = run.mlflow_run_id
    assert model.ref.version == version
    assert mlflow.get_run(run_id).data.tags["scoring.unvalidated_model"] == f"version {version} is FAILED"


def test_row_counts_are_checked_before_anything_is_published(champion, blob_storage, scoring_config,
                                                             scoring_run):
    config = scoring_config(blob_container="scores-rowcheck")
    with pytest.raises(StageFailed) as caught:
        with scoring_run(config) as run:
            model = run.stage("resolve_model", scoring.resolve_model)
            with run.stage("check_publish_target", scoring.open_publish_target) as target:
                scored = run.stage("score", scoring.score_and_write, model)
                miscounted = dataclasses.replace(scored, rows=scored.rows + 1)
                run.stage("publish", scoring.publish_predictions, miscounted, target)
    assert isinstance(caught.value.cause, DataError)
    assert f"hold {scored.rows} rows but the run scored {scored.rows + 1}; nothing was published" in \
        str(caught.value)
    assert blob_names(blob_storage, "scores-rowcheck") == []
