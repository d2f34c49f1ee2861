"""The streaming job killed with SIGKILL in the middle of a batch, then started again: every trip once."""
import datetime
import os
import signal
import time

import pytest
from pyspark.sql import functions as F

from support.jobs import dbfs_path, start_job_process, stop_process_group
from support.spark_cluster import REPO_ROOT, new_scoring_home

STREAMING_JOB = "taxi_fares_streaming"
START, END = datetime.date(2016, 2, 1), datetime.date(2016, 2, 6)
MODEL = "taxi_fares_streaming_faults"
TABLES = "dbfs:/tables"


def _commits(home, table: str) -> int:
    log = dbfs_path(home, f"{TABLES}/{table}") / "_delta_log"
    return len(list(log.glob("*.json"))) if log.exists() else 0


def _wait_until_mid_batch(home, process, timeout_seconds=600):
    """Wait until a batch has stored its trips but not yet merged its predictions (after batch 0)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, "the stream ended before it could be killed"
        log = _commits(home, "taxi_fares_predictions")
        if log >= 1 and _commits(home, "streaming_trips") > log:
            return
        time.sleep(0.05)
    raise AssertionError("no batch was caught between its trips commit and its log commit")


@pytest.mark.slow
def test_a_stream_killed_mid_batch_and_restarted_scores_every_trip_exactly_once(spark, tmp_path_factory):
    from mlops.data.generator import land_file

    home, parameters = new_scoring_home(spark, tmp_path_factory, "stream_faults", 6_000, START, END, MODEL)
    raw = spark.read.parquet(str(dbfs_path(home, parameters.pop("taxi_fares_raw_data"))))
    landing = tmp_path_factory.mktemp("landing")
    for day in range((END - START).days + 1):
        land_file(raw.where(F.to_date("tpep_pickup_datetime") == F.lit(START + datetime.timedelta(days=day))),
                  landing)
    for name in ("scoring_data_start_date", "scoring_data_end_date"):
        parameters.pop(name)
    parameters.update({"wheel_path": str(REPO_ROOT / "dist"), "taxi_fares_stream_source": str(landing),
                       "table_location": TABLES, "checkpoint_location": "dbfs:/checkpoints",
                       "max_files_per_trigger": "1"})
    logs = tmp_path_factory.mktemp("stream_logs")
    with open(logs / "killed.out", "w") as out, open(logs / "killed.err", "w") as err:
        stream = start_job_process(STREAMING_JOB, home, {**parameters, "stream_trigger": "processing_time",
                                                         "trigger_interval_seconds": "1",
                                                         "stream_run_minutes": "10"}, out, err)
        try:
            _wait_until_mid_batch(home, stream)
            os.killpg(stream.pid, signal.SIGKILL)
            stream.wait(timeout=60)
        finally:
            stop_process_group(stream)
    killed_at = _commits(home, "taxi_fares_predictions")
    assert killed_at < (END - START).days + 1

    with open(logs / "restart.out", "w") as out, open(logs / "restart.err", "w") as err:
        restart = start_job_process(STREAMING_JOB, home, parameters, out, err)
        assert restart.wait(timeout=900) == 0, (logs / "restart.err").read_text()[-3000:]

    from mlops.data.tables import TableStore
    from taxi_fares.features import clean_trips
    from taxi_fares.schema import with_trip_id

    tables = TableStore(spark, str(dbfs_path(home, TABLES)))
    log = tables.read("taxi_fares_predictions")
    assert log.groupBy("request_id", "model_version").count().where(F.col("count") > 1).count() == 0
    landed = with_trip_id(clean_trips(raw)).select("trip_id").distinct()
    assert log.select("trip_id").distinct().join(landed, "trip_id").count() == landed.count() == log.count()
    trips = tables.read("streaming_trips")
    assert trips.count() == trips.select("trip_id").distinct().count() == landed.count()
