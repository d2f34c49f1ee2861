"""``make demo``: generate trips, then run the real jobs through the local runtime."""
import argparse
import datetime
import sys
from pathlib import Path

import mlflow

from mlops.datagen import generate
from mlops.local.home import mlflow_tracking_uri
from mlops.local.jobs import run_job
from mlops.local.session import spark_session

RAW_DATA = "dbfs:/mlops/taxi_fares/raw/trips"
TRAINING_JOB = Path("databricks_jobs/taxi_fares_training.json")


def _banner(text):
    print(f"\n=== {text} ===", flush=True)


def _print_model_summary(model_name):
    client = mlflow.tracking.MlflowClient(tracking_uri=mlflow_tracking_uri(),
                                          registry_uri=mlflow_tracking_uri())
    versions = client.search_model_versions(f"name='{model_name}'")
    latest = max(versions, key=lambda version: int(version.version))
    run = client.get_run(latest.run_id)
    metrics = run.data.metrics
    _banner("Result")
    print(f"registered model: {model_name} version {latest.version} (run {latest.run_id})")
    print("held-out metrics: " + ", ".join(
        f"{name} {metrics[name]:.3f}" for name in ("rmse", "mae", "r2", "baseline_rmse") if name in metrics))
    print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {mlflow_tracking_uri()} --port 5000")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--data", default=RAW_DATA)
    args = parser.parse_args(argv)
    spark = spark_session()
    _banner(f"Generating {args.rows} trips for January and February 2016")
    generate(spark, args.rows, datetime.date(2016, 1, 1), datetime.date(2016, 2, 29), args.data, seed=7)
    _banner(f"Running {TRAINING_JOB}")
    record = run_job(TRAINING_JOB, {"taxi_fares_raw_data": args.data})
    if record.state != "SUCCESS":
        print(f"training job {record.state}: see {record.path}", file=sys.stderr)
        return 1
    _print_model_summary("taxi_fares")
    return 0


if __name__ == "__main__":
    sys.exit(main())
