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
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "benchmarks" / ".data"
RESULTS = ROOT / "benchmarks" / "results.md"
SOURCE_PATHS = [str(ROOT / "ml_source"), str(ROOT / "ml_ops")]
MODEL_NAME = "taxi_fares_bench"
ROUTES = {
    "A": "our score-and-append stage (a scalar Arrow UDF with NumPy: only the features go to Python; "
         "model once per worker; appended to the inference log: a Delta table by pickup_date, one commit)",
    "B": "raw in-process LightGBM predict on the feature matrix (all cores)",
    "C": "Azure sample's route: toPandas to the driver, pandas predict, CSV",
    "D": "the peer route: mlflow.pyfunc.spark_udf on the registered model, the same log rows appended "
         "to a Delta table by pickup_date, one commit",
}
# Collecting to the driver is the route that runs out of memory first: one attempt above this size.
C_SINGLE_ATTEMPT_ABOVE = 4_000_000
# At 4M rows one attempt of C takes about 30 s: five minutes at 10M means the driver stalled.
C_TIMEOUT_SECONDS = 300
PROFILE = "P"
# Monitoring one window of the inference log (benchmarks/monitoring.py).
MONITORING = "M"
SPARK_ROUTES = ("A", "C", "D")
CORES = os.cpu_count() or 1
DRIVER_MEMORY = "3g"
# Arrow batches of 10k rows: big enough to amortise per-batch costs, small enough for the worker's cache.
ARROW_BATCH_ROWS = 10_000
SAMPLE_SECONDS = 0.05
TRAINING_ROWS = 200_000
SCORING_START, SCORING_END = datetime.date(2016, 2, 1), datetime.date(2016, 2, 29)


# ---------------------------------------------------------------- shared helpers

def spark_session():
    from pyspark.sql import SparkSession

    from mlops.local import delta_jars

    builder = SparkSession.builder
    for key, value in delta_jars.spark_conf().items():
        builder = builder.config(key, value)
    return (builder.master(f"local[{CORES}]").appName("mlops-bench")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.memory", DRIVER_MEMORY)
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.sql.shuffle.partitions", str(CORES))
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
            .getOrCreate())


def features_path(rows: int) -> Path:
    return DATA_DIR / f"features_{rows}"


def feature_names():
    from taxi_fares.features import FEATURE_COLUMNS

    return list(FEATURE_COLUMNS)


class RssSampler:
    """Peak RSS of this Python process and, separately, of its JVM child, sampled every 50 ms."""

    def __init__(self):
        self.process = psutil.Process()
        self.python_peak = 0
        self.jvm_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _jvm(self):
        for child in self.process.children(recursive=False):
            try:
                if "java" in child.name():
                    return child
            except psutil.Error:
                continue
        return None

    def _run(self):
        jvm = None
        while not self._stop.is_set():
            self.python_peak = max(self.python_peak, self.process.memory_info().rss)
            jvm = jvm or self._jvm()
            if jvm is not None:
                try:
                    self.jvm_peak = max(self.jvm_peak, jvm.memory_info().rss)
                except psutil.Error:
                    jvm = None
            time.sleep(SAMPLE_SECONDS)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------- data and model (parent process)

def prepare_data(spark, rows: int) -> Path:
    """Generated trips -> cleaned -> point-in-time feature set, written once as Parquet."""
    from taxi_fares import features
    from taxi_fares.data import generate_trips

    target = features_path(rows)
    if (target / "_SUCCESS").exists():
        return target
    print(f"generating {rows} trips and their features into {target}", flush=True)
    trips = features.clean_trips(generate_trips(spark, rows, SCORING_START, SCORING_END, seed=rows))
    feature_set = features.build_training_set(trips, features.pickup_zip_features(trips),
                                              features.dropoff_zip_features(trips))
    # As many files as cores: each Spark task reads one, and pandas gets balanced work.
    feature_set.repartition(CORES).write.mode("overwrite").parquet(str(target))
    return target


def train_and_register(spark, rows: int, tracking_uri: str, artifacts: Path) -> str:
    """Train the 100-tree model on a sample of the smallest feature set; register it as Champion."""
    import mlflow
    from taxi_fares import training
    from taxi_fares.features import LABEL_COLUMN

    frame = spark.read.parquet(str(features_path(rows))).limit(TRAINING_ROWS).toPandas()
    booster = training.train_model(frame[feature_names()], frame[LABEL_COLUMN],
                                   training.TrainingParams(num_rounds=100, num_leaves=32))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.create_experiment("bench", artifact_location=artifacts.as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=MODEL_NAME,
                                         input_example=frame[feature_names()].head(5))
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, "Champion", info.registered_model_version)
    return f"models:/{MODEL_NAME}@Champion"


# ---------------------------------------------------------------- routes (child process)

def _provenance():
    from mlops.inference import engine

    return engine.Provenance(model_name=MODEL_NAME, model_version="1", job_run_id="bench",
                             model_alias="Champion", scored_at=datetime.datetime.now(datetime.timezone.utc))


def route_a(spark, features, model_uri, output: Path):
    """Our stage's score-and-append (stages.scoring.write_predictions) into the inference log."""
    from mlops.inference import engine
    from mlops.lifecycle.registry import ModelRef
    from mlops.stages.scoring import ResolvedModel, write_predictions
    from mlops.data.tables import TableStore

    model = ResolvedModel(ModelRef(MODEL_NAME, "1"), "alias Champion", engine.load_scoring_model(model_uri))
    tables = TableStore(spark, str(output))

    def run(rep):
        write_predictions(tables, f"predictions_{rep}", spark.read.parquet(features), model, _provenance())
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
        log = engine.log_rows(scored, _provenance(), feature_names())
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
        return engine.score_features(spark.read.parquet(features), model, _provenance())

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
                    from benchmarks.monitoring import route_m

                    make_run = {"A": route_a, "C": route_c, "D": route_d, "M": route_m}[route]
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

def run_child(route, rows, model_uri, tracking_uri, reps) -> dict:
    command = [sys.executable, "-m", "benchmarks.run", "--route", route, "--rows", str(rows),
               "--model-uri", model_uri, "--tracking-uri", tracking_uri, "--reps", str(reps)]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join([*SOURCE_PATHS, str(ROOT)]))
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    timeout = C_TIMEOUT_SECONDS if route == "C" and rows > C_SINGLE_ATTEMPT_ABOVE else None
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        result = _stalled(route, rows, child, timeout)
        print(f"  {route} {rows:>9,} rows: {result['failed']}", flush=True)
        return result
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"route {route} at {rows} rows failed:\n{stderr[-4000:]}")
    result = json.loads(lines[-1][len("RESULT "):])
    if route == PROFILE:
        print(f"  profile of A at {rows:,} rows: {result['steps']}", flush=True)
        return result
    if "failed" in result:
        print(f"  {route} {rows:>9,} rows: failed ({result['failed'][:120]}); driver python "
              f"{result['python_peak_rss'] / 2**20:,.0f} MiB, JVM {result['jvm_peak_rss'] / 2**20:,.0f} MiB "
              f"at the peak", flush=True)
        return result
    print(f"  {route} {rows:>9,} rows: {result['rows_per_second']:>10,.0f} rows/s "
          f"(median of {reps}: {result['median_seconds']:.2f}s; driver python "
          f"{result['python_peak_rss'] / 2**20:,.0f} MiB, JVM {result['jvm_peak_rss'] / 2**20:,.0f} MiB; "
          f"{time.monotonic() - started:.0f}s wall)", flush=True)
    return result


def _stalled(route, rows, child, timeout) -> dict:
    """A child that gave no result in time: its memory now (Python and JVM), then it is killed."""
    processes = [psutil.Process(child.pid)]
    processes += processes[0].children(recursive=True)
    memory = {"python_peak_rss": 0, "jvm_peak_rss": 0}
    for process in processes:
        try:
            key = "jvm_peak_rss" if "java" in process.name() else "python_peak_rss"
            memory[key] = max(memory[key], process.memory_info().rss)
        except psutil.Error:
            continue
    for process in reversed(processes):
        with contextlib.suppress(psutil.Error):
            process.kill()
    child.communicate()
    return {"route": route, "rows": rows, **memory,
            "failed": f"no result after {timeout} s: the driver stalled with its JVM at "
                      f"{memory['jvm_peak_rss'] / 2**20:,.0f} MiB (driver memory {DRIVER_MEMORY})"}


def machine() -> dict:
    import pyspark

    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return {"cores": CORES, "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "java": java[0] if java else "unknown",
            "pyspark": pyspark.__version__, "platform": platform.platform(),
            "load_average_at_start": [round(value, 2) for value in os.getloadavg()]}


def _mib(value):
    return f"{value / 2**20:,.0f}"


JUDGED_ROWS = 4_000_000
DEFAULT_SIZES = "1000000,4000000,10000000"


def judged_size(sizes: list) -> int:
    """The size targets are judged at: 4M rows, or the largest size below that."""
    return max([size for size in sizes if size <= JUDGED_ROWS] or [min(sizes)])


def report(results: dict, sizes: list, reps: int, host: dict, started: str) -> str:
    judged = judged_size(sizes)

    def speed(route, rows=judged):
        result = results.get((route, rows), {})
        return result.get("rows_per_second")

    fastest_b = judged / min(results[("B", judged)]["seconds"])
    ratios = {"A/D": speed("A") / speed("D"), "A/C": speed("A") / speed("C") if speed("C") else None,
              "A/B": speed("A") / speed("B"), "A/B against B's fastest repetition": speed("A") / fastest_b}
    lines = [
        "# Batch scoring benchmark", "",
        f"Run: {started} (UTC), `python -m benchmarks.run` (sizes {', '.join(map(str, sizes))}; "
        f"one warm-up, median of {reps} timed repetitions; C runs once above "
        f"{C_SINGLE_ATTEMPT_ABOVE:,} rows; "
        "each route and size in a fresh process).", "",
        "## Machine", "",
        f"- cores: {host['cores']}, memory: {host['memory_gib']} GiB, platform: {host['platform']}",
        f"- python {host['python']}, {host['java']}, pyspark {host['pyspark']}",
        f"- load average (1, 5, 15 min) at the start: {host['load_average_at_start']}, at the end: "
        f"{[round(value, 2) for value in os.getloadavg()]}", "",
        "## Routes", "",
        *[f"- **{route}**: {text}" for route, text in ROUTES.items()], "",
        f"Model: LightGBM, 100 trees, 32 leaves, {len(feature_names())} features, trained on "
        f"{TRAINING_ROWS:,} rows. Spark: local[{CORES}], driver memory {DRIVER_MEMORY}, "
        f"Arrow batches of {ARROW_BATCH_ROWS:,} rows, input Parquet in {CORES} files. A and D write the "
        "same inference log rows (request id, event time, every feature, prediction, label, model and "
        "run ids).", "",
        "Driver peak RSS is sampled every 50 ms: the Python driver process, and its JVM child "
        "(in local mode the JVM also hosts the executors). Python workers are not counted.", "",
        "## Figures", "",
        "| route | rows | median s | rows/s | all runs (s) | driver Python peak MiB | JVM peak MiB |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    measured = {key: result for key, result in results.items() if key[0] != PROFILE}
    for (route, rows), result in sorted(measured.items(), key=lambda item: (item[0][1], item[0][0])):
        memory = f"{_mib(result['python_peak_rss'])} | {_mib(result['jvm_peak_rss'])}"
        if "failed" in result:
            lines.append(f"| {route} | {rows:,} | failed | | {result['failed'][:90]} | {memory} |")
            continue
        runs = ", ".join(f"{value:.2f}" for value in result["seconds"])
        lines.append(f"| {route} | {rows:,} | {result['median_seconds']:.2f} "
                     f"| {result['rows_per_second']:,.0f} | {runs} | {memory} |")
    lines += ["", f"## Ratios at {judged:,} rows (targets are judged here)", ""]
    lines += [f"- {name}: {value:.2f}" if value else f"- {name}: C failed" for name, value in ratios.items()]
    for rows in sizes:
        if rows == judged:
            continue
        parts = [f"A/{route} {speed('A', rows) / speed(route, rows):.2f}" if speed(route, rows)
                 else f"{route} failed" for route in ("D", "B", "C")]
        lines.append(f"- at {rows:,} rows: {', '.join(parts)}")
    noisy = [f"{route} at {rows:,} rows (runs {', '.join(f'{value:.2f}' for value in result['seconds'])} s)"
             for (route, rows), result in sorted(measured.items())
             if "seconds" in result and max(result["seconds"]) > 1.2 * min(result["seconds"])]
    if noisy:
        lines += ["", "Repetitions that differ by more than 20% (read these ratios with care): "
                  + "; ".join(noisy) + "."]
    lines += ["", "## Driver memory by size (peak MiB, Python driver + JVM)", ""]
    for route in ("A", "C", "D"):
        figures = [f"{rows:,}: {_mib(results[(route, rows)]['python_peak_rss'])} + "
                   f"{_mib(results[(route, rows)]['jvm_peak_rss'])}"
                   + (" (failed)" if "failed" in results[(route, rows)] else "") for rows in sizes]
        lines.append(f"- {route}: " + "; ".join(figures))
    targets = [("A/D >= 1.3 (our stage against spark_udf with a Delta append)", ratios["A/D"] >= 1.3),
               ("A >= 3x C", bool(ratios["A/C"]) and ratios["A/C"] >= 3.0),
               # Judged against B's fastest repetition: a slowed-down B must not pass the target.
               ("A >= 70% of B (B's fastest repetition)",
                ratios["A/B against B's fastest repetition"] >= 0.70)]
    lines += ["", "## Targets", ""]
    lines += [f"- {name}: {'met' if met else '**missed**'}" for name, met in targets]
    if (PROFILE, judged) in results:
        lines += _profile_lines(results, judged)
    if not all(met for _, met in targets):
        lines += ["", "## Why targets are missed on this machine", "", *MISSED_TARGETS_EXPLAINED]
    return "\n".join(lines) + "\n"


MISSED_TARGETS_EXPLAINED = [
    "- A/D sits close to its bound, so it moves with the machine's noise from size to size. A and D "
    "read the same features, run the same LightGBM trees and write the same rows to the "
    "same Delta table. Both send only the features to Python; A copies them from Arrow into NumPy "
    "where D goes through pandas, and A writes without Parquet dictionaries on near-unique columns. "
    "The profile shows the predict and the partitioned write taking most of A's time, and both are "
    "the same work in D: with LightGBM's own predictor A/D is bounded near D / (read + predict + "
    "write). A compiled tree predictor would move it further: tl2cgen 1.0 (treelite) predicts 2.2x "
    "faster on this model but gave predictions up to 14 away from LightGBM's, so it is not used; "
    "lleaves needs an llvmlite older than the one numba on Databricks Runtime ML requires.",
    "- Two cores serve the JVM (read, write), the Python workers (Arrow decode, predict) "
    "and the driver at once. B predicts with both cores and nothing else running; A's profile shows "
    "the Arrow round trip through Python and the partitioned write costing about as much as the "
    "predict itself, so A cannot reach 70% of B here. On a cluster those steps spread over workers.",
    "- C runs with Arrow enabled (`spark.sql.execution.arrow.pyspark.enabled`, the Databricks "
    "default), which makes `toPandas` far faster than the route the sample was measured with; "
    "C is kept that way rather than slowed down. C is single-threaded pandas on the driver, and its "
    "driver memory grows with the data (see the memory table; past the driver's memory it stalls or "
    "fails), while A's Python driver stays flat.",
]


def _profile_lines(results: dict, rows: int) -> list:
    """Where A's time goes at ``rows`` rows, next to B's predict-only time."""
    steps = results[(PROFILE, rows)]["steps"]
    lines = ["", f"## Profile of A at {rows:,} rows (median seconds, same process design)", "",
             "| step | seconds | rows/s |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} |" for name, seconds in steps.items()]
    lines += [f"| A: the stage (table store: key and schema checks, the log's first commit) | "
              f"{results[('A', rows)]['median_seconds']:.2f} "
              f"| {results[('A', rows)]['rows_per_second']:,.0f} |",
              f"| D: spark_udf and a Delta append | {results[('D', rows)]['median_seconds']:.2f} "
              f"| {results[('D', rows)]['rows_per_second']:,.0f} |",
              f"| B: LightGBM predict only, all cores | {results[('B', rows)]['median_seconds']:.2f} "
              f"| {results[('B', rows)]['rows_per_second']:,.0f} |"]
    parquet, delta = steps.get(PARQUET_STEP), steps.get(DELTA_STEP)
    if parquet and delta:
        from mlops.local.delta_jars import DELTA_VERSION

        lines += ["", f"What the Delta writer costs: in this run the Delta append (Delta Lake "
                  f"{DELTA_VERSION} inside Spark: the files, their statistics, one commit) takes "
                  f"{delta:.2f} s against "
                  f"{parquet:.2f} s for the Parquet write of the same rows, {delta / parquet:.2f}x. "
                  f"{EARLIER_DELTA_PATH}"]
    return lines


PARQUET_STEP = "read, score, Parquet write by pickup_date (the log's writer settings)"
DELTA_STEP = "read, score, Delta append by pickup_date (= A without the table store's checks)"
# The path before Delta ran inside Spark, from the run of 2026-12-01 03:33 in this file's history.
EARLIER_DELTA_PATH = ("The earlier path, Spark's Parquet write committed by delta-rs, took 15.48 s at "
                      "4,000,000 rows against 15.46 s for the Parquet write alone (1.00x), in the run of "
                      "2026-12-01 03:33 UTC; that machine day was faster, so compare the ratios, not the "
                      "seconds.")


SECTION_TITLES = {"monitoring": "\n# Monitoring benchmark", "serving": "\n# Serving benchmark"}


def _published_section(text: str, title: str) -> str:
    """The section ``title`` of results.md as it stands ('' when absent), up to the next section."""
    if title not in text:
        return ""
    rest = text.split(title, 1)[1]
    ends = [rest.index(other) for other in SECTION_TITLES.values() if other in rest]
    return title + (rest[:min(ends)] if ends else rest).rstrip("\n") + "\n"


def write_results(scoring_text: str) -> None:
    """results.md: the scoring report, then the monitoring and serving sections.

    A section comes from its benchmark's last saved run on this machine, else it stays as
    published: running one benchmark never drops another's figures.
    """
    from benchmarks import monitoring, serving

    published = RESULTS.read_text() if RESULTS.exists() else ""
    tail = "".join(module.section(json.loads(module.SAVED.read_text())) if module.SAVED.exists()
                   else _published_section(published, SECTION_TITLES[name])
                   for name, module in (("monitoring", monitoring), ("serving", serving)))
    RESULTS.write_text(scoring_text + tail)


def save_section(path: Path, saved: dict) -> None:
    """Keep one benchmark's raw figures, and rewrite results.md with its section."""
    path.write_text(json.dumps(saved, indent=2))
    write_results(RESULTS.read_text().split("\n# Monitoring benchmark")[0].split("\n# Serving benchmark")[0]
                  .rstrip("\n") + "\n")


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
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    store = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
    try:
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
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return 0


def main(argv=None):
    # Measure the working tree's code, in this process and in Spark's Python workers alike.
    sys.path[:0] = [path for path in SOURCE_PATHS if path not in sys.path]
    os.environ["PYTHONPATH"] = os.pathsep.join([*SOURCE_PATHS, str(ROOT)])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--route", choices=sorted([*ROUTES, PROFILE, MONITORING]))
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
