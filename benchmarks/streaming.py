"""Streaming benchmark: the streaming job against the batch job on the same trips, and its latency.

``python -m benchmarks.streaming`` from the repository root (``make bench`` runs it). Trips of
the realistic generator are landed as one Parquet file per day. In the same run, on the local
Spark, with the same registered Champion:

- the batch scoring job's stages (feature engineering, then score-and-merge into the log)
  score the days as one range;
- the streaming job's stage scores the same files with ``available_now``, in one batch.

Both are timed by wall clock from the first stage to the last commit. Then the latency run:
a feeder lands a file of trips every second at BENCH_STREAM_RATE trips per second, while the
stream runs with a 5-second processing-time trigger; each batch reports the seconds from its
files landing to its rows committed (p50 and p99 of its rows).
"""
import datetime
import os
import sys
import threading
import time
import uuid

from benchmarks import common

TRIPS = int(os.environ.get("BENCH_STREAM_TRIPS", "200000"))
RATE = int(os.environ.get("BENCH_STREAM_RATE", "1000"))
FEED_SECONDS = int(os.environ.get("BENCH_STREAM_SECONDS", "60"))
START, END = datetime.date(2016, 2, 1), datetime.date(2016, 2, 8)
MODEL = "taxi_fares_stream_bench"


def train_champion(raw, tracking_uri: str, artifacts):
    """A 100-tree model on a sample of the trips, registered as the PASSED Champion."""
    from taxi_fares import features, training

    trips = features.clean_trips(raw)
    frame = features.build_training_set(trips, features.pickup_zip_features(trips),
                                        features.dropoff_zip_features(trips)).limit(50_000).toPandas()
    booster = training.train_model(frame[list(features.FEATURE_COLUMNS)], frame[features.LABEL_COLUMN],
                                   training.TrainingParams(num_rounds=100, num_leaves=32))
    common.register_champion(booster, tracking_uri, artifacts, MODEL)


def task(spark, name: str, job: str, config):
    """The task run a notebook of ``job`` would open on ``config``."""
    from mlops.local.dbutils import LocalDbutils
    from mlops.local.session import LocalSession
    from mlops.orchestration import task_run
    from mlops.platform.context import RunContext, bind

    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    session = LocalSession(spark=spark, job_name=job, job_run_id=run_id)
    session.task_key = name
    context = RunContext(job_name=job, job_run_id=run_id, task=name)
    return bind(context), task_run(name, config, spark, LocalDbutils(session))


def timed_batch(spark, store, raw_path, round_name: str) -> dict:
    from mlops.config import ScoringConfig
    from mlops.stages import scoring

    config = ScoringConfig.from_params({
        "taxi_fares_raw_data": str(raw_path), "scoring_data_start_date": str(START),
        "scoring_data_end_date": str(END), "registered_model_name": MODEL, "experiment_name": "bench",
        "table_location": str(store / f"batch_tables_{round_name}"), "publish_results": "false",
        "online_store_path": str(store / f"batch_online_{round_name}")})
    binding, opened = task(spark, "score", "taxi_fares_batch_scoring", config)
    started = time.perf_counter()
    with binding, opened as run:
        model = run.stage("resolve_model", scoring.resolve_model)
        run.stage("feature_engineering", scoring.engineer_features)
        scored = run.stage("score", scoring.score_and_write, model)
    return {"seconds": time.perf_counter() - started, "rows": scored.rows}


def timed_stream(spark, store, landing, round_name: str, **overrides) -> dict:
    from mlops.config import StreamingConfig
    from mlops.stages import streaming

    config = StreamingConfig.from_params({
        "taxi_fares_stream_source": str(landing), "registered_model_name": MODEL, "experiment_name": "bench",
        "table_location": str(store / f"stream_tables_{round_name}"),
        "checkpoint_location": str(store / f"checkpoints_{round_name}"),
        "online_store_path": str(store / "stream_online"), **overrides})
    binding, opened = task(spark, "stream_score", "taxi_fares_streaming", config)
    started = time.perf_counter()
    with binding, opened as run:
        summary = run.stage("stream", streaming.score_stream)
    return {"seconds": time.perf_counter() - started, "rows": summary.rows,
            "batches": [vars(report) for report in summary.batches]}


def feed(table, landing, stop: threading.Event) -> int:
    """Land RATE trips every second until ``stop``, as an uploader would; returns the files landed.

    Written with pyarrow, outside Spark, so the feeder does not queue behind the stream's jobs.
    """
    import pyarrow.parquet as pq

    landed = 0
    for second in range(FEED_SECONDS):
        if stop.is_set():
            break
        began = time.monotonic()
        staging = landing.parent / f".staging-{uuid.uuid4().hex[:8]}.parquet"
        pq.write_table(table.slice(second * RATE, RATE), staging)
        staging.rename(landing / f"trips-{second:05d}.parquet")
        landed += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
    return landed


def latency_run(spark, store) -> dict:
    from pyspark.sql import functions as F
    from taxi_fares.data import generate_trips

    landing = store / "latency_landing"
    landing.mkdir()
    # In pickup order, as trips reach a real feed: few of them arrive behind the watermark.
    trips = generate_trips(spark, RATE * FEED_SECONDS, END, END, seed=5).orderBy(
        F.col("tpep_pickup_datetime")).toArrow()
    stop = threading.Event()
    files = []
    # The stream runs here, in the main thread, which owns the task's signal handlers.
    feeder = threading.Thread(target=lambda: files.append(feed(trips, landing, stop)))
    feeder.start()
    try:
        outcome = timed_stream(spark, store, landing, "latency", stream_trigger="processing_time",
                               trigger_interval_seconds="5", stream_run_minutes=str((FEED_SECONDS + 60) / 60))
    finally:
        stop.set()
        feeder.join()
    return {**outcome, "files": files[0] if files else 0}


def mean_of(runs: list) -> dict:
    """The rounds of one route: their mean seconds, their rows (the same each round)."""
    return {"seconds": sum(run["seconds"] for run in runs) / len(runs), "rows": runs[0]["rows"],
            "rounds": [round(run["seconds"], 1) for run in runs]}


def section(saved: dict) -> str:
    """The results.md section of a saved streaming run."""
    batch, stream = saved["batch"], saved["stream"]
    batch_rate, stream_rate = batch["rows"] / batch["seconds"], stream["rows"] / stream["seconds"]
    latency = saved["latency"]
    scored = [report for report in latency.get("batches", []) if report["rows"]]
    p50s = sorted(report["latency_p50_seconds"] for report in scored)
    worst = max((report["latency_p99_seconds"] for report in scored), default=float("nan"))
    median = p50s[len(p50s) // 2] if p50s else float("nan")
    ratio = stream_rate / batch_rate
    lines = ["", "# Streaming benchmark", "",
             f"Run: {saved['started']} (UTC), `python -m benchmarks.streaming`: {saved['trips']:,} "
             f"generated trips, {saved['files']} files (one per day), on `local[{common.CORES}]`, the same "
             "Champion.", "",
             "Each route ran twice, in the order batch, stream, stream, batch; the wall time is their mean.",
             "", "| route | trips scored | wall time (s) | rounds (s) | trips/s |",
             "| --- | ---: | ---: | --- | ---: |",
             f"| batch job stages (features, score, merge) | {batch['rows']:,} | {batch['seconds']:.1f} | "
             f"{', '.join(map(str, batch['rounds']))} | {batch_rate:,.0f} |",
             f"| streaming job, `available_now` | {stream['rows']:,} | {stream['seconds']:.1f} | "
             f"{', '.join(map(str, stream['rounds']))} | {stream_rate:,.0f} |", "",
             f"- streaming throughput against batch: {ratio:.2f} (goal at least 0.7: "
             f"{'met' if ratio >= 0.7 else '**missed**'})",
             f"- latency at {RATE:,} trips/s for {FEED_SECONDS} s ({latency.get('files', 0)} files), "
             "5 s trigger: "
             f"{len(scored)} batches, {latency.get('rows', 0):,} trips "
             f"({sum(report['late_rows'] for report in scored):,} late); median of the batches' p50 "
             f"{median:.1f} s, worst batch p99 {worst:.1f} s (goal p99 under 30 s: "
             f"{'met' if worst < 30 else '**missed**'})", ""]
    return "\n".join(lines)


def main():
    common.use_working_tree()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    from pyspark.sql import functions as F
    from taxi_fares.data import generate_trips

    from mlops.data.generator import land_file

    with common.bench_store() as (store, tracking_uri):
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        spark = common.spark_session()
        raw_path = store / "raw"
        generate_trips(spark, TRIPS, START, END, seed=17).write.parquet(str(raw_path))
        raw = spark.read.parquet(str(raw_path))
        landing = store / "landing"
        days = (END - START).days + 1
        for day in range(days):
            date = START + datetime.timedelta(days=day)
            land_file(raw.where(F.to_date("tpep_pickup_datetime") == F.lit(date)), landing)
        train_champion(raw, tracking_uri, store / "artifacts")
        # Batch, stream, stream, batch: neither route gains from running second (a warm JVM).
        rounds = {"batch": [], "stream": []}
        for position, route in enumerate(("batch", "stream", "stream", "batch")):
            print(f"round {position + 1}: {route}", flush=True)
            rounds[route].append(timed_batch(spark, store, raw_path, str(position)) if route == "batch"
                                 else timed_stream(spark, store, landing, str(position)))
        batch, stream = (mean_of(rounds[route]) for route in ("batch", "stream"))
        print(f"latency: {RATE} trips/s for {FEED_SECONDS} s", flush=True)
        latency = latency_run(spark, store)
        spark.stop()
        saved = {"started": started, "trips": TRIPS, "files": days, "batch": batch, "stream": stream,
                 "latency": latency}
        common.save_section("streaming", saved, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
