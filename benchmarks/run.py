"""Batch scoring benchmark: our stage (A) against raw LightGBM (B), the Azure sample (C) and spark_udf (D).

``python -m benchmarks.run`` from the repository root (``make bench``). Data is generated
once per size and cached under ``benchmarks/.data/``; one model (100 trees) is trained and
registered in a temporary MLflow store. Each route and size runs in a fresh interpreter
(fresh JVM), so one route's memory never counts against another's: one warm-up, then
BENCH_REPS timed repetitions (default 3), median reported. Results go to
``benchmarks/results.md``.

Environment: BENCH_SIZES (default ``1000000,4000000,10000000``), BENCH_REPS (default 3).
Targets are judged at 4M rows (or the largest size below it); route C runs once above 4M rows.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow

from benchmarks import common
from benchmarks.scoring_report import DELTA_STEP, PARQUET_STEP, ROUTES, report
from benchmarks.common import (C_SINGLE_ATTEMPT_ABOVE, CORES, DATA_DIR, DEFAULT_SIZES, MODEL_NAME, PROFILE,
                               RESULTS, RssSampler, feature_names, features_path, judged_size, prepare_data,
                               provenance, run_child, spark_session, train_and_register, use_working_tree)

# Monitoring one window of the inference log, and with estimated quality (benchmarks/monitoring.py).
MONITORING = "M"
ESTIMATING = "E"


# ---------------------------------------------------------------- routes (child process)

def route_a(spark, features, model_uri, output: Path):
    """Our stage's score-and-append (stages.scoring.write_predictions) into the inference log."""
    from mlops.inference import engine
    from mlops.lifecycle.registry import ModelRef
    from mlops.stages.scoring import ResolvedModel, write_predictions
    from mlops.data.tables import TableStore

    model = ResolvedModel(ModelRef(MODEL_NAME, "1"), "alias Champion", engine.load_scoring_model(model_uri))
    tables = TableStore(spark, str(output))

    def run(rep):
        write_predictions(tables, f"predictions_{rep}", spark.read.parquet(features), model, provenance())
    return run


def route_c(spark, features, model_uri, output: Path):
    """The sample's route: collect the features, predict in pandas on the driver, write CSV."""
    import mlflow
    from taxi_fares import training
    from taxi_fares.features import LABEL_COLUMN, TRIP_KEY_COLUMNS

    booster = mlflow.lightgbm.load_model(model_uri)

    def run(rep):
        frame = spark.read.parquet(features).toPandas()
        frame["prediction"] = training.predict(booster, frame[feature_names()])
        frame[[*TRIP_KEY_COLUMNS, LABEL_COLUMN, "prediction"]].to_csv(output / f"predictions_{rep}.csv",
                                                                      index=False)
    return run


def route_d(spark, features, model_uri, output: Path):
    """The peer route: mlflow.pyfunc.spark_udf, the same log rows, a Delta append by pickup_date."""
    import mlflow
    from pyspark.sql import functions as F

    from mlops.inference import engine

    predict = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="double", env_manager="local")

    def run(rep):
        frame = spark.read.parquet(features)
        inputs = frame.select("trip_id", *feature_names(), F.col("fare_amount").alias(engine.LABEL),
                              F.col("tpep_pickup_datetime").alias(engine.TIMESTAMP))
        scored = inputs.withColumn(engine.PREDICTION, predict(F.struct(*feature_names())))
        log = engine.log_rows(scored, provenance(), feature_names())
        _delta_append(log, output / f"predictions_{rep}")
    return run


def _delta_append(frame, folder: Path):
    """A plain Delta append by pickup_date, with Delta inside Spark."""
    from mlops.inference import engine

    frame.write.format("delta").mode("append").partitionBy(*engine.PARTITION_COLUMNS).save(str(folder))


def profile_a(spark, features, model_uri, output: Path) -> dict:
    """Where A's time goes: each step adds one piece of the stage, timed like the routes."""
    from pyspark.sql import functions as F

    from mlops.inference import engine

    model = engine.load_scoring_model(model_uri)
    settings = engine.log_write_settings(model.feature_names)
    first_feature = F.arrow_udf(_first_column, "double")

    def scored():
        return engine.score_features(spark.read.parquet(features), model, provenance())

    def noop(frame):
        frame.write.format("noop").mode("overwrite").save()

    def tuned(step):
        def run(rep):
            with engine.session_settings(spark, settings):
                step(rep)
        return run

    return {
        "read the features (no-op sink)": lambda rep: noop(spark.read.parquet(features)),
        "read, the features through a scalar Arrow UDF, no predict (no-op sink)": tuned(lambda rep: noop(
            spark.read.parquet(features).withColumn(
                "echo", first_feature(*[F.col(name) for name in model.feature_names])))),
        "read and score: the log rows (no-op sink)": tuned(lambda rep: noop(scored())),
        "read, score, Parquet write by pickup_date (Spark's default writer settings)":
            lambda rep: scored().write.mode("overwrite").partitionBy(*engine.PARTITION_COLUMNS).parquet(
                str(output / f"partitioned_{rep}")),
        PARQUET_STEP: tuned(
            lambda rep: scored().write.mode("overwrite").partitionBy(*engine.PARTITION_COLUMNS).parquet(
                str(output / f"partitioned_{rep}"))),
        DELTA_STEP: tuned(
            lambda rep: _delta_append(scored(), output / f"delta_{rep}")),
    }


def _first_column(*columns: pyarrow.Array) -> pyarrow.Array:
    return columns[0]


def route_b(features, model_uri):
    """In-process LightGBM predict on a contiguous float64 matrix (read outside the timing)."""
    import lightgbm
    import numpy as np
    import pyarrow.parquet as pq

    from mlops.inference import engine

    model = engine.load_scoring_model(model_uri)
    booster = lightgbm.Booster(model_str=model.text)
    table = pq.read_table(features, columns=list(model.feature_names))
    matrix = np.column_stack([table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
                              for name in model.feature_names])
    matrix = np.ascontiguousarray(matrix)

    def run(rep):
        booster.predict(matrix)
    return run


def _timed(run, reps: int, output: Path) -> list:
    """Seconds of ``reps`` repetitions of ``run`` after one warm-up."""
    seconds = []
    for rep in range(reps + 1):
        started = time.perf_counter()
        run(rep)
        elapsed = time.perf_counter() - started
        if rep:
            seconds.append(elapsed)
        shutil.rmtree(output, ignore_errors=True)
        output.mkdir(exist_ok=True)
    return seconds


def measure(route: str, rows: int, model_uri: str, reps: int) -> dict:
    """One warm-up and ``reps`` timed repetitions of ``route``, with peak driver RSS."""
    features = str(features_path(rows))
    output = Path(tempfile.mkdtemp(prefix=f"bench-{route}-", dir=DATA_DIR))
    try:
        if route == PROFILE:
            steps = profile_a(spark_session(), features, model_uri, output)
            medians = {name: statistics.median(_timed(step, reps, output)) for name, step in steps.items()}
            return {"route": route, "rows": rows, "steps": medians}
        with RssSampler() as sampler:
            try:
                if route == "B":
                    run = route_b(features, model_uri)
                else:
                    spark = spark_session()
                    from benchmarks.monitoring import route_e, route_m

                    make_run = {"A": route_a, "C": route_c, "D": route_d, "M": route_m, "E": route_e}[route]
                    run = make_run(spark, features, model_uri, output)
                seconds = _timed(run, reps, output)
            except Exception as error:  # the failure and the memory it reached are the result
                return {"route": route, "rows": rows, "failed": f"{type(error).__name__}: {str(error)[:300]}",
                        "python_peak_rss": sampler.python_peak, "jvm_peak_rss": sampler.jvm_peak}
        median = statistics.median(seconds)
        return {"route": route, "rows": rows, "seconds": seconds, "median_seconds": median,
                "rows_per_second": rows / median, "python_peak_rss": sampler.python_peak,
                "jvm_peak_rss": sampler.jvm_peak}
    finally:
        shutil.rmtree(output, ignore_errors=True)


def child_main(args):
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    result = measure(args.route, args.rows, args.model_uri, args.reps)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- orchestration and report

def machine() -> dict:
    import pyspark

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return {"cores": CORES, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "java": java[0] if java else "unknown",
            "pyspark": pyspark.__version__, "platform": platform.platform(),
            "load_average_at_start": [round(value, 2) for value in os.getloadavg()]}


def write_results(scoring_text: str) -> None:
    """results.md: this report, then the monitoring and serving sections from their saved figures."""
    from benchmarks import monitoring, serving

    common.write_results(scoring_text, {"monitoring": monitoring.section, "serving": serving.section})


def report_from_saved():
    """Rewrite results.md from the raw figures of the last run (benchmarks/.data/results.json)."""
    saved = json.loads((DATA_DIR / "results.json").read_text())
    results = {(result["route"], result["rows"]): result for result in saved["results"]}
    write_results(report(results, saved["sizes"], saved["reps"], saved["host"], saved["started"]))
    print(RESULTS.read_text())
    return 0


def parent_main(args):
    sizes = [int(size) for size in os.environ.get("BENCH_SIZES", DEFAULT_SIZES).split(",") if size]
    reps = int(os.environ.get("BENCH_REPS", "3"))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    host = machine()
    with common.bench_store() as (store, tracking_uri):
        spark = spark_session()
        for rows in sizes:
            prepare_data(spark, rows)
        model_uri = train_and_register(spark, sizes[0], tracking_uri, store / "artifacts")
        spark.stop()
        results = {}
        for rows in sizes:
            print(f"{rows:,} rows", flush=True)
            for route in ("B", "A", "D", "C"):
                route_reps = 1 if route == "C" and rows > C_SINGLE_ATTEMPT_ABOVE else reps
                results[(route, rows)] = run_child(route, rows, model_uri, tracking_uri, route_reps)
        judged = judged_size(sizes)
        results[(PROFILE, judged)] = run_child(PROFILE, judged, model_uri, tracking_uri, reps)
        (DATA_DIR / "results.json").write_text(json.dumps(
            {"host": host, "started": started, "reps": reps, "sizes": sizes,
             "results": [result for result in results.values()]}, indent=2))
        text = report(results, sizes, reps, host, started)
        write_results(text)
        print(text)
    return 0


def main(argv=None):
    use_working_tree()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--route", choices=sorted([*ROUTES, PROFILE, MONITORING, ESTIMATING]))
    parser.add_argument("--rows", type=int)
    parser.add_argument("--model-uri")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite results.md from the last run's raw figures without measuring")
    args = parser.parse_args(argv)
    if args.report_only:
        return report_from_saved()
    return child_main(args) if args.route else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
