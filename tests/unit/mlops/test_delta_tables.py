"""The table store on Delta Lake inside Spark: the SQL that runs on Databricks, run here."""
import datetime
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from mlops.cli import build_parser
from mlops.data import conflicts
from mlops.data.tables import TableStore
from mlops.errors import ConfigError, DataError
from support.spark_cluster import worker_environment

LOCATION = "dbfs:/tables"


@pytest.fixture
def trips(spark):
    rows = [(1, 12.5, datetime.date(2016, 1, 1), datetime.datetime(2016, 1, 1, 3, 0)),
            (2, 7.0, datetime.date(2016, 1, 2), datetime.datetime(2016, 1, 2, 4, 30)),
            (3, 30.25, datetime.date(2016, 1, 2), datetime.datetime(2016, 1, 2, 23, 59))]
    return spark.createDataFrame(rows, "trip_id int, fare double, pickup_date date, pickup_time timestamp")


@pytest.fixture
def store(spark, mlops_home):
    return TableStore(spark, LOCATION)


def folder_of(store, name: str) -> str:
    return store.host.locate(store.uri(name)).spark


def trip_ids(frame) -> list:
    return sorted(row.trip_id for row in frame.collect())


def test_writes_are_versions_that_time_travel_reads_back_and_history_names_spark_and_delta(store, trips):
    store.write(trips, "trips", partition_by=["pickup_date"], metadata={"source": "test"})
    assert store.metadata("trips") == {"source": "test"}
    store.write(trips.limit(1), "trips", partition_by=["pickup_date"])
    assert store.version("trips") == 1 and store.read("trips").count() == 1
    assert trip_ids(store.read("trips", version=0)) == [1, 2, 3]
    history = store.history("trips")
    assert [entry["version"] for entry in history] == [1, 0]
    assert all("Apache-Spark/4.1" in entry["engineInfo"] and "Delta-Lake/" in entry["engineInfo"]
               for entry in history)
    assert store.metadata("trips") == {}
    with pytest.raises(DataError, match=r"table 'trips' has no version 5: its versions are 0 to 1"):
        store.read("trips", version=5)


def test_upsert_is_merge_into_by_key_and_the_change_feed_shows_the_updates(spark, store, trips):
    properties = {"delta.enableChangeDataFeed": "true"}
    store.upsert(trips, "log", ["trip_id"], ["pickup_date"], properties=properties)
    again = trips.where("trip_id = 2").withColumn("fare", trips.fare * 2)
    store.upsert(again, "log", ["trip_id"], ["pickup_date"], properties=properties)
    rows = {row.trip_id: row.fare for row in store.read("log").collect()}
    assert rows == {1: 12.5, 2: 14.0, 3: 30.25}
    assert [entry["operation"] for entry in store.history("log")] == ["MERGE", "CREATE TABLE AS SELECT"]
    changes = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 1)
               .load(folder_of(store, "log")).collect())
    assert sorted((row.trip_id, row._change_type, row.fare) for row in changes) == \
        [(2, "update_postimage", 14.0), (2, "update_preimage", 7.0)]


def test_fill_column_merges_only_the_rows_whose_value_changes(spark, store, trips):
    store.upsert(trips, "log", ["trip_id"], ["pickup_date"])
    updates = spark.createDataFrame([(1, 12.5), (3, 31.0), (9, 1.0)], "trip_id int, fare double")
    assert store.fill_column("log", updates, "trip_id", "fare") is True
    assert {row.trip_id: row.fare for row in store.read("log").collect()} == {1: 12.5, 2: 7.0, 3: 31.0}
    versions = store.version("log")
    assert store.fill_column("log", updates, "trip_id", "fare") is False
    assert store.version("log") == versions


def test_rows_with_another_schema_fail_naming_the_columns_and_change_nothing(store, trips):
    store.upsert(trips, "log", ["trip_id"], ["pickup_date"])
    changed = trips.drop("fare").withColumn("trip_id", trips.trip_id.cast("string"))
    changed = changed.withColumn("tip", changed.trip_id)
    with pytest.raises(DataError) as caught:
        store.upsert(changed, "log", ["trip_id"], ["pickup_date"])
    assert "the schema does not match: missing fare; not in the table tip; " \
           "trip_id is string, the table has int" in str(caught.value)
    assert store.version("log") == 0


def test_a_merge_source_without_the_key_columns_is_refused_by_name(spark, store, trips):
    store.upsert(trips, "log", ["trip_id"], ["pickup_date"])
    with pytest.raises(DataError, match=r"cannot merge into table 'log': the rows lack the key column\(s\) "
                                        r"trip_id"):
        store.upsert(trips.drop("trip_id"), "log", ["trip_id"], ["pickup_date"])
    with pytest.raises(DataError, match=r"the rows lack the key column\(s\) fare"):
        store.fill_column("log", trips.select("trip_id"), "trip_id", "fare")


def test_a_missing_table_and_a_bad_identifier_are_named(spark, store):
    with pytest.raises(DataError, match=r"table 'nothing' does not exist at dbfs:/tables/nothing; build it"):
        store.read("nothing", missing_hint="build it")
    with pytest.raises(ConfigError, match=r"the table part 'bad-name' is not a valid Unity Catalog name"):
        TableStore(spark, "dev.taxi").read("bad-name")
    with pytest.raises(ConfigError, match="must be a folder .* or a Unity Catalog schema written "
                                          "catalog.schema"):
        TableStore(spark, "dev.taxi.extra")


def test_an_old_parquet_folder_says_how_to_convert_it_and_convert_makes_it_delta(spark, store, trips, capsys):
    trips.write.partitionBy("pickup_date").parquet(folder_of(store, "trips"))
    with pytest.raises(DataError, match=r"is a folder without a Delta log: if it holds a Parquet table from "
                                        r"before, convert it in place with `mlops table convert trips`"):
        store.read("trips")
    args = build_parser().parse_args(["table", "convert", "trips", "--location", LOCATION])
    assert args.func(args) == 0
    assert "is now a Delta table (version 0)" in capsys.readouterr().out
    converted = store.read("trips")
    assert trip_ids(converted) == [1, 2, 3]
    assert converted.where("pickup_date = DATE'2016-01-02'").count() == 2
    assert store.history("trips")[0]["operation"] == "CONVERT"
    with pytest.raises(DataError, match="already is a Delta table"):
        store.convert("trips")


def test_the_cli_prints_describe_history_with_merge_rows(spark, store, trips, capsys):
    store.upsert(trips, "log", ["trip_id"], ["pickup_date"])
    store.upsert(trips.limit(1), "log", ["trip_id"], ["pickup_date"])
    args = build_parser().parse_args(["table", "history", "log", "--location", LOCATION])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"table log at {store.uri('log')}"
    assert "MERGE" in lines[3] and "0 new, 1 updated" in lines[3] and "Delta-Lake/" in lines[3]
    assert "CREATE TABLE AS SELECT" in lines[4]


def test_a_declared_new_column_is_added_to_an_older_table_even_inside_an_idempotent_write(
        spark, store, trips):
    from mlops.data.tables import TXN_APP_ID, TXN_VERSION
    from mlops.inference.engine import session_settings

    store.upsert(trips, "log", ["trip_id"], ["pickup_date"])
    flagged = trips.where("trip_id = 3").withColumn("late", trips.trip_id > 2)
    with pytest.raises(DataError, match="not in the table late"):
        store.upsert(flagged, "log", ["trip_id"], ["pickup_date"])
    with session_settings(spark, {TXN_APP_ID: "stream-1", TXN_VERSION: 7}):
        store.upsert(flagged, "log", ["trip_id"], ["pickup_date"], added_columns=("late",))
        # The same (app id, version) again: Delta skips it, so the fare change below never lands.
        store.upsert(flagged.withColumn("fare", flagged.fare + 1), "log", ["trip_id"], ["pickup_date"],
                     added_columns=("late",))
    rows = {row.trip_id: (row.fare, row.late) for row in store.read("log").collect()}
    assert rows == {1: (12.5, None), 2: (7.0, None), 3: (30.25, True)}
    assert spark.conf.get(TXN_APP_ID, None) is None


def test_the_server_writer_and_spark_share_the_log_table_both_ways(spark, store, trips):
    change_feed = {"delta.enableChangeDataFeed": "true"}
    store.upsert(trips, "log", ["trip_id"], ["pickup_date"], properties=change_feed)
    folder = folder_of(store, "log")
    server_rows = trips.where("trip_id = 3").withColumn("trip_id", trips.trip_id + 10).toArrow()
    from deltalake import write_deltalake

    write_deltalake(folder, server_rows, mode="append", partition_by=["pickup_date"])
    assert DeltaTable(folder).version() == 1
    assert trip_ids(store.read("log")) == [1, 2, 3, 13]
    store.upsert(trips.where("trip_id = 1").withColumn("fare", trips.fare + 1), "log", ["trip_id"],
                 ["pickup_date"])
    rows = {row.trip_id: row.fare for row in store.read("log").collect()}
    assert rows == {1: 13.5, 2: 7.0, 3: 30.25, 13: 30.25}
    changes = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", 1)
               .load(folder).collect())
    assert sorted((row.trip_id, row._change_type) for row in changes) == \
        [(1, "update_postimage"), (1, "update_preimage"), (13, "insert")]


def test_an_older_log_gains_the_new_columns_from_the_server_and_spark_writes_beside_it(spark, store):
    import numpy as np
    import pyarrow
    from deltalake import write_deltalake
    from taxi_fares.features import FEATURE_COLUMNS

    from mlops.inference import engine
    from mlops.serving.request_log import LoggedRequest, RequestLog, log_schema, new_request_ids

    folder = folder_of(store, "log")
    older = pyarrow.schema([field for field in log_schema(FEATURE_COLUMNS)
                            if field.name not in engine.ADDED_LOG_COLUMNS])
    write_deltalake(folder, older.empty_table(), partition_by=[engine.PICKUP_DATE])
    log = RequestLog(Path(folder), list(FEATURE_COLUMNS), flush_rows=2, flush_seconds=60)
    when = datetime.datetime(2016, 2, 1, 12, tzinfo=datetime.timezone.utc)
    try:
        matrix = np.ones((2, len(FEATURE_COLUMNS)))
        log.add(LoggedRequest("m", "1", "Challenger", when, new_request_ids(2), matrix, np.full(2, 9.5),
                              [when.replace(tzinfo=None)] * 2))
    finally:
        log.close()
    batch_rows = store.read("log").limit(1).withColumns({engine.REQUEST_ID: F.lit("from-batch"),
                                                         engine.LATE_FEATURES: F.lit(False),
                                                         engine.ARM: F.lit("champion")})
    store.upsert(batch_rows, "log", engine.LOG_KEYS, engine.PARTITION_COLUMNS,
                 added_columns=engine.ADDED_LOG_COLUMNS)

    assert (log.written, log.dropped) == (2, 0)
    rows = {row[engine.REQUEST_ID]: (row[engine.LATE_FEATURES], row[engine.ARM])
            for row in store.read("log").collect()}
    assert rows.pop("from-batch") == (False, "champion")
    assert list(rows.values()) == [(None, "challenger")] * 2


def test_a_commit_refused_for_a_concurrent_one_is_retried_then_named(monkeypatch):
    monkeypatch.setattr(conflicts, "FIRST_PAUSE_SECONDS", 0.001)
    attempts = []

    def losing_once():
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("[DELTA_CONCURRENT_APPEND] ConcurrentAppendException: Files were added")
        return "done"

    assert conflicts.committed(losing_once, "dev.taxi.log") == "done" and len(attempts) == 2

    def always_losing():
        raise RuntimeError("io.delta.exceptions.ConcurrentAppendException: Files were added")

    with pytest.raises(DataError, match=r"table dev.taxi.log kept changing under this write: 3 attempts each "
                                        r"lost to a concurrent commit \(ConcurrentAppendException\)"):
        conflicts.committed(always_losing, "dev.taxi.log", attempts=3)
    with pytest.raises(ZeroDivisionError):
        conflicts.committed(lambda: 1 / 0, "dev.taxi.log")


def test_two_writers_merging_the_same_partition_at_once_both_land_once(spark, store, trips):
    store.upsert(trips, "log", ["trip_id"], ["pickup_date"])
    left = trips.withColumn("trip_id", trips.trip_id + 100)
    right = trips.withColumn("trip_id", trips.trip_id + 200)
    barrier, errors = threading.Barrier(2), []

    def write(rows):
        try:
            barrier.wait()
            store.upsert(rows, "log", ["trip_id"], ["pickup_date"])
            store.upsert(rows, "log", ["trip_id"], ["pickup_date"])
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(rows,)) for rows in (left, right)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert trip_ids(store.read("log")) == [1, 2, 3, 101, 102, 103, 201, 202, 203]


def test_a_write_killed_mid_commit_leaves_the_previous_version_and_a_rerun_completes(
        spark, store, trips, mlops_home):
    store.write(trips, "trips", partition_by=["pickup_date"])
    folder = store.host.locate(store.uri("trips")).driver
    script = textwrap.dedent("""
        import sys
        from mlops.data.tables import TableStore
        from mlops.local.session import spark_session
        spark = spark_session()
        rows = spark.range(int(sys.argv[1])).selectExpr(
            "cast(id as int) as trip_id", "cast(id as double) as fare",
            "date'2016-01-03' as pickup_date", "timestamp'2016-01-03 00:00:00' as pickup_time")
        TableStore(spark, "dbfs:/tables").write(rows, "trips", partition_by=["pickup_date"])
    """)
    environment = dict(os.environ, **worker_environment(), MLOPS_HOME=str(mlops_home),
                       MLOPS_SPARK_MASTER="local[1]")
    writer = subprocess.Popen([sys.executable, "-c", script, "30000000"], env=environment,
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        partition = folder / "pickup_date=2016-01-03"
        while not (partition.exists() and any(partition.iterdir())) and writer.poll() is None:
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.05)
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert store.version("trips") == 0
    assert trip_ids(store.read("trips")) == [1, 2, 3]
    rerun = subprocess.run([sys.executable, "-c", script, "1000"], env=environment, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert store.version("trips") == 1 and store.read("trips").count() == 1000
