"""``make demo``: generate trips, then run the bundle's jobs (target dev) through the local runtime.

Tunes, trains, validates and promotes on January 2016, then scores February 2016 with the
Champion and publishes the results to a local Azurite (or a folder when Node is absent).
Then the loop closes (:mod:`mlops.demo.loop`): February is monitored, a drifted March
is scored and monitored, and the monitoring job retrains. The Champion answers three trips
online (:mod:`mlops.demo.online`), and last, two files of trips are scored as they land
(:mod:`mlops.demo.streaming`).
"""
import argparse
import contextlib
import datetime
import json
import os
import sys
import mlflow

from mlops.data.table_history import COLUMNS, history_rows
from mlops.data.tables import TableStore
from mlops.lifecycle.model_admin import format_table
from mlops.local import azurite
from mlops.data.generator import generate
from mlops.platform.home import mlflow_tracking_uri, mlops_home
from mlops.demo.ab_test import ab_test
from mlops.demo.loop import close_the_loop
from mlops.demo.online import serve_three_trips
from mlops.demo.streaming import stream_two_batches
from mlops.local.job_file import bundle_job
from mlops.local.jobs import run_job
from mlops.local.session import spark_session
from mlops.config import ScoringConfig
from mlops.publishing import make_publisher
from mlops.stages.scoring import publish_prefix
from mlops import platform

TARGET = "dev"
TRAINING_JOB = "taxi_fares_training"
SCORING_JOB = "taxi_fares_batch_scoring"
STORAGE_ENV = "AZURE_STORAGE_CONNECTION_STRING"
SHOWN_FILES = 4
# The first model is tuned; the retraining later reuses its params (restricted tuning).
FIRST_TRAINING = {"execute_tuning": "true", "tuning_trials": "8"}


def scoring_config() -> ScoringConfig:
    """The batch scoring job's parameters in the demo's target, as its notebook parses them."""
    return ScoringConfig.from_params(bundle_job(SCORING_JOB, TARGET).parameters)


def labels_of(spark):
    """Where the generator writes late labels: the scoring job's labels table."""
    config = scoring_config()
    return TableStore(spark, config.table_location), config.labels_table


def _banner(text):
    print(f"\n=== {text} ===", flush=True)


def _run(job_key, overrides):
    _banner(f"Running {job_key} (mlops job run {job_key} --target {TARGET})")
    record = run_job(bundle_job(job_key, TARGET), overrides)
    if record.state != "SUCCESS":
        raise SystemExit(f"{job_key} ended {record.state}; run record: {record.path}")
    return record


def _print_model_summary(model_name, training_record):
    client = mlflow.MlflowClient(tracking_uri=mlflow_tracking_uri(),
                                 registry_uri=platform.current().registry_store("databricks-uc",
                                                                                mlflow_tracking_uri()))
    versions = client.search_model_versions(f"name='{model_name}'")
    latest = max(versions, key=lambda version: int(version.version))
    metrics = client.get_run(latest.run_id).data.metrics
    champion = client.get_registered_model(model_name).aliases.get("Champion", "none")
    _banner("Model")
    print(f"registered model: {model_name} version {latest.version} "
          f"(validation {latest.tags.get('model_validation_status', 'n/a')}); Champion is version {champion}")
    print("held-out metrics: " + ", ".join(
        f"{name} {metrics[name]:.3f}" for name in ("rmse", "mae", "r2", "baseline_rmse") if name in metrics))
    tuning = training_record.tasks["train"].get("task_values", {}).get("hyperparameters")
    if tuning:
        print(f"{tuning}; best params: {latest.tags.get('tuning.best_params')}")


@contextlib.contextmanager
def _storage():
    """A local Azurite for the demo's publish step, or the folder fallback when Node is absent."""
    if not azurite.available():
        print("Azurite is not installed (npm missing): results go to the local publish folder instead.")
        yield None
        return
    server = azurite.AzuriteServer.start(mlops_home() / "azurite")
    previous = os.environ.get(STORAGE_ENV)
    os.environ[STORAGE_ENV] = server.connection_string
    try:
        print(f"Azurite listening at {server.blob_endpoint}")
        yield server
    finally:
        if previous is None:
            os.environ.pop(STORAGE_ENV, None)
        else:
            os.environ[STORAGE_ENV] = previous
        server.stop()


def _print_published(server, scoring_record):
    config = ScoringConfig.from_params(scoring_record.tasks["score"]["parameters"])
    folder = platform.driver_path(config.publish_folder)
    with make_publisher(server.connection_string if server else None, config.blob_container,
                        folder) as publisher:
        prefix, run_id = publish_prefix(config), scoring_record.run_id
        _banner(f"Published results ({'Azurite' if server else f'folder {folder}'})")
        blobs = publisher.list_run(prefix, run_id)
        for name, size in blobs[:SHOWN_FILES] + blobs[-1:]:
            print(f"  {config.blob_container}/{name}  {size:>10,} bytes")
        if len(blobs) > SHOWN_FILES + 1:
            print(f"  ... {len(blobs)} blobs in all")
        manifest = publisher.read_manifest(prefix, run_id)
        files = manifest.pop("files")
        manifest.pop("file_partitions", None)
        print("_manifest.json (file list shortened):")
        print(json.dumps({**manifest, "files": files[:2] + [f"... {len(files)} files"]}, indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mlops.demo", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--data", default=scoring_config().taxi_fares_raw_data,
                        help="where the trips go (default: the dev target's raw volume)")
    args = parser.parse_args(argv)
    spark = spark_session()
    _banner(f"Generating {args.rows} trips for January and February 2016 into {args.data}")
    generate(spark, args.rows, datetime.date(2016, 1, 1), datetime.date(2016, 2, 29), args.data, seed=7,
             labels=labels_of(spark))
    trained = _run(TRAINING_JOB, {"taxi_fares_raw_data": args.data, **FIRST_TRAINING})
    config = scoring_config()
    _print_model_summary(config.registered_model_name, trained)
    with _storage() as server:
        scoring = _run(SCORING_JOB, {"taxi_fares_raw_data": args.data})
        _print_published(server, scoring)
    _banner(f"Inference log {config.predictions_table} (mlops table history {config.predictions_table})")
    log = TableStore(spark, config.table_location)
    print(format_table(COLUMNS, history_rows(log, config.predictions_table)))
    close_the_loop(spark, args.data, args.rows, _run, _banner, labels_of(spark))
    serve_three_trips(_banner, config)
    stream_two_batches(spark, _run, _banner, TARGET)
    ab_test(spark, _run, _banner, TRAINING_JOB, config)
    _banner("Next")
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {mlflow_tracking_uri()} --port 5000")
    print(f"run records and telemetry: {mlops_home() / 'runs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
