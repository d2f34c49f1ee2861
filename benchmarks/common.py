"""What the benchmarks share: paths, the Spark session, the cached data and model, the child runner,
and results.md, whose sections each benchmark writes.
"""
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "benchmarks" / ".data"
RESULTS = ROOT / "benchmarks" / "results.md"
SOURCE_PATHS = [str(ROOT / "ml_source"), str(ROOT / "ml_ops")]
MODEL_NAME = "taxi_fares_bench"
# Collecting to the driver is the route that runs out of memory first: one attempt above this size.
C_SINGLE_ATTEMPT_ABOVE = 4_000_000
# At 4M rows one attempt of C takes about 30 s: five minutes at 10M means the driver stalled.
C_TIMEOUT_SECONDS = 300
PROFILE = "P"
CORES = os.cpu_count() or 1
DRIVER_MEMORY = "3g"
# Arrow batches of 10k rows: big enough to amortise per-batch costs, small enough for the worker's cache.
ARROW_BATCH_ROWS = 10_000
SAMPLE_SECONDS = 0.05
TRAINING_ROWS = 200_000
SCORING_START, SCORING_END = datetime.date(2016, 2, 1), datetime.date(2016, 2, 29)


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


@contextlib.contextmanager
def bench_store():
    """A fresh folder for the run's MLflow store and its tracking URI, removed at exit.

    Spark's workers use this Python. MLflow's sqlite stores, opened here and in child processes,
    keep their artifact root in the folder's ``home``: without one MLflow makes ``./mlruns`` here.
    """
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    store = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    try:
        keep_mlflow_in(store / "home")
        yield store, f"sqlite:///{store / 'mlflow.db'}"
    finally:
        shutil.rmtree(store, ignore_errors=True)


def keep_mlflow_in(home: Path) -> None:
    """Give MLflow's sqlite stores opened here and in child processes an artifact root in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ["MLOPS_HOME"] = str(home)
    from mlops.lifecycle import tracking

    tracking.local_store_defaults()


def train_and_register(spark, rows: int, tracking_uri: str, artifacts: Path) -> str:
    """Train the 100-tree model on a sample of the smallest feature set; register it as Champion."""
    from taxi_fares import training
    from taxi_fares.features import LABEL_COLUMN

    frame = spark.read.parquet(str(features_path(rows))).limit(TRAINING_ROWS).toPandas()
    booster = training.train_model(frame[feature_names()], frame[LABEL_COLUMN],
                                   training.TrainingParams(num_rounds=100, num_leaves=32))
    register_champion(booster, tracking_uri, artifacts, MODEL_NAME, frame[feature_names()].head(5))
    return f"models:/{MODEL_NAME}@Champion"


def register_champion(booster, tracking_uri: str, artifacts: Path, model_name: str,
                      input_example=None) -> str:
    """Log ``booster`` as a new version of ``model_name``, tagged PASSED and made the Champion."""
    import mlflow

    from mlops.lifecycle.registry import PASSED, VALIDATION_STATUS_TAG

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    experiment = mlflow.create_experiment("bench", artifact_location=artifacts.as_uri())
    with mlflow.start_run(experiment_id=experiment):
        # Given, not inferred: inference imports the model in a child process, which opens the
        # store without this project's defaults and so makes ./mlruns in the working folder.
        info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=model_name,
                                         input_example=input_example,
                                         pip_requirements=mlflow.lightgbm.get_default_pip_requirements())
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(model_name, version, VALIDATION_STATUS_TAG, PASSED)
    client.set_registered_model_alias(model_name, "Champion", version)
    return version


def provenance():
    from mlops.inference import engine

    return engine.Provenance(model_name=MODEL_NAME, model_version="1", job_run_id="bench",
                             model_alias="Champion", scored_at=datetime.datetime.now(datetime.timezone.utc))


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


def mib(value):
    return f"{value / 2**20:,.0f}"


JUDGED_ROWS = 4_000_000
DEFAULT_SIZES = "1000000,4000000,10000000"


def judged_size(sizes: list) -> int:
    """The size targets are judged at: 4M rows, or the largest size below that."""
    return max([size for size in sizes if size <= JUDGED_ROWS] or [min(sizes)])


SECTION_TITLES = {"monitoring": "\n# Monitoring benchmark", "serving": "\n# Serving benchmark",
                  "tuning": "\n# Tuning benchmark", "streaming": "\n# Streaming benchmark"}


def saved_path(name: str) -> Path:
    """The raw figures of benchmark ``name``'s last run on this machine."""
    return DATA_DIR / f"{name}.json"


def _published_section(text: str, title: str) -> str:
    """The section ``title`` of results.md as it stands ('' when absent), up to the next section."""
    if title not in text:
        return ""
    rest = text.split(title, 1)[1]
    ends = [rest.index(other) for other in SECTION_TITLES.values() if other in rest]
    return title + (rest[:min(ends)] if ends else rest).rstrip("\n") + "\n"


def write_results(scoring_text: str, renderers: dict) -> None:
    """results.md: the scoring report, then the monitoring and serving sections.

    ``renderers`` maps a section's name to the function that writes it from its saved figures.
    A section with a renderer and saved figures is written anew; any other stays as published:
    running one benchmark never drops another's figures.
    """
    published = RESULTS.read_text() if RESULTS.exists() else ""
    RESULTS.write_text(scoring_text + "".join(
        renderers[name](json.loads(saved_path(name).read_text()))
        if name in renderers and saved_path(name).exists() else _published_section(published, title)
        for name, title in SECTION_TITLES.items()))


def save_section(name: str, saved: dict, render) -> None:
    """Keep benchmark ``name``'s raw figures, rewrite its results.md section with ``render``, and print it."""
    saved_path(name).write_text(json.dumps(saved, indent=2))
    published = RESULTS.read_text() if RESULTS.exists() else ""
    scoring = published
    for title in SECTION_TITLES.values():
        scoring = scoring.split(title)[0]
    write_results(scoring.rstrip("\n") + "\n", {name: render})
    print(render(saved))


def use_working_tree() -> None:
    """Measure the working tree's code, in this process and in Spark's Python workers alike."""
    sys.path[:0] = [path for path in SOURCE_PATHS if path not in sys.path]
    os.environ["PYTHONPATH"] = os.pathsep.join([*SOURCE_PATHS, str(ROOT)])
