"""Local Delta tables: Spark writes the files, delta-rs commits them; readers see committed versions only."""
import datetime
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from deltalake import DeltaTable

from mlops.cli import build_parser
from mlops.data import delta_log
from mlops.data.tables import TableStore
from mlops.errors import DataError

REPO = __import__("pathlib").Path(__file__).resolve().parents[3]


@pytest.fixture
def trips(spark):
    rows = [(1, 12.5, datetime.date(2016, 1, 1), datetime.datetime(2016, 1, 1, 3, 0)),
            (2, 7.0, datetime.date(2016, 1, 2), datetime.datetime(2016, 1, 2, 4, 30)),
            (3, 30.25, datetime.date(2016, 1, 2), datetime.datetime(2016, 1, 2, 23, 59))]
    return spark.createDataFrame(rows, "trip_id int, fare double, pickup_date date, pickup_time timestamp")


def test_each_write_is_one_version_and_every_version_reads_back(spark, trips, tmp_path):
    folder = tmp_path / "log"
    assert delta_log.write(trips, folder, "append", ["pickup_date"]) == 0
    assert delta_log.write(trips, folder, "append", ["pickup_date"]) == 1
    assert delta_log.read(spark, folder).count() == 6
    first = delta_log.read(spark, folder, version=0)
    assert sorted(row.trip_id for row in first.collect()) == [1, 2, 3]
    assert first.where("pickup_date = DATE'2016-01-02'").count() == 2
    assert [(entry["version"], entry["rows"]) for entry in delta_log.history(folder)] == [(1, "3"), (0, "3")]


def test_another_delta_reader_opens_the_table_unchanged(spark, trips, tmp_path):
    folder = tmp_path / "log"
    delta_log.write(trips, folder, "append", ["pickup_date"])
    table = DeltaTable(str(folder)).to_pyarrow_table()
    assert table.num_rows == 3
    assert sorted(table.column("trip_id").to_pylist()) == [1, 2, 3]
    assert str(table.schema.field("pickup_time").type).startswith("timestamp[us")


def test_history_lists_operation_mode_and_rows_newest_first(spark, trips, tmp_path):
    folder = tmp_path / "log"
    delta_log.write(trips, folder, "append", ["pickup_date"])
    delta_log.write(trips.limit(1), folder, "overwrite", ["pickup_date"])
    history = delta_log.history(folder)
    assert [(entry["version"], entry["mode"], entry["rows"]) for entry in history] == \
        [(1, "Overwrite", "1"), (0, "Append", "3")]
    assert delta_log.read(spark, folder).count() == 1
    assert delta_log.read(spark, folder, version=0).count() == 3


def test_an_append_with_another_schema_fails_naming_the_columns_and_changes_nothing(spark, trips, tmp_path):
    folder = tmp_path / "log"
    delta_log.write(trips, folder, "append", ["pickup_date"])
    changed = trips.drop("fare").withColumn("trip_id", trips.trip_id.cast("string"))
    changed = changed.withColumn("tip", changed.trip_id)
    with pytest.raises(DataError) as caught:
        delta_log.write(changed, folder, "append", ["pickup_date"])
    message = str(caught.value)
    assert "the schema does not match: missing fare; not in the table tip; " \
           "trip_id is string, the table has integer" in message
    assert DeltaTable(str(folder)).version() == 0
    assert not list(folder.glob("_staging-*"))


def test_reading_a_version_that_does_not_exist_gives_the_range(spark, trips, tmp_path):
    folder = tmp_path / "log"
    delta_log.write(trips, folder, "append", ["pickup_date"])
    with pytest.raises(DataError, match=r"has no version 5; its versions are 0 to 0"):
        delta_log.read(spark, folder, version=5)


def test_an_old_parquet_table_says_how_to_convert_it(spark, trips, mlops_home, capsys):
    parquet = TableStore(spark, "dbfs:/tables", "parquet")
    parquet.write(trips, "trips", partition_by=["pickup_date"])
    store = TableStore(spark, "dbfs:/tables", "delta")
    with pytest.raises(DataError, match=r"without a _delta_log \(a Parquet table\): convert it in place "
                                        r"with `mlops table convert trips`"):
        store.read("trips")
    args = build_parser().parse_args(["table", "convert", "trips", "--location", "dbfs:/tables"])
    assert args.func(args) == 0
    assert "is now a Delta table (version 0)" in capsys.readouterr().out
    converted = store.read("trips")
    assert sorted(row.trip_id for row in converted.collect()) == [1, 2, 3]
    assert converted.where("pickup_date = DATE'2016-01-02'").count() == 2
    assert DeltaTable(str(store._local("trips"))).to_pyarrow_table().num_rows == 3
    with pytest.raises(DataError, match="already is a Delta table"):
        store.convert("trips")


def test_an_unknown_write_mode_is_refused(trips, tmp_path):
    with pytest.raises(DataError, match="a Delta write mode must be one of append, overwrite, got 'merge'"):
        delta_log.write(trips, tmp_path / "log", "merge")


def test_a_killed_write_leaves_the_previous_version_intact(spark, trips, tmp_path):
    folder = tmp_path / "log"
    delta_log.write(trips, folder, "append", ["pickup_date"])
    script = textwrap.dedent(f"""
        from pyspark.sql import SparkSession
        from mlops.data import delta_log
        spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
        rows = spark.range(30_000_000).selectExpr("cast(id as int) as trip_id", "cast(id as double) as fare",
            "date'2016-01-03' as pickup_date", "timestamp'2016-01-03 00:00:00' as pickup_time")
        delta_log.write(rows, {str(folder)!r}, "append", ["pickup_date"])
    """)
    paths = os.pathsep.join([str(REPO / "ml_ops"), str(REPO / "ml_source")])
    environment = dict(os.environ, PYTHONPATH=paths, SPARK_LOCAL_IP="127.0.0.1")
    writer = subprocess.Popen([sys.executable, "-c", script], env=environment, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(folder.glob("_staging-*/_temporary")) and writer.poll() is None:
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.05)
    finally:
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert DeltaTable(str(folder)).version() == 0
    assert sorted(row.trip_id for row in delta_log.read(spark, folder).collect()) == [1, 2, 3]


def test_the_store_keeps_local_delta_tables_and_the_cli_shows_history(spark, trips, mlops_home, capsys):
    store = TableStore(spark, "dbfs:/tables", "delta")
    store.write(trips, "trips", partition_by=["pickup_date"], metadata={"source": "test"})
    store.write(trips.limit(2), "trips", partition_by=["pickup_date"])
    assert store.exists("trips") and store.read("trips").count() == 2
    assert [entry["version"] for entry in store.history("trips")] == [1, 0]
    args = build_parser().parse_args(["table", "history", "trips", "--location", "dbfs:/tables"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"table trips at {store.uri('trips')}"
    assert "WRITE" in out and "Overwrite" in out


def test_replacing_one_partition_is_one_commit_that_leaves_the_others(spark, trips, tmp_path):
    folder = tmp_path / "log"
    delta_log.write(trips, folder, "append", ["pickup_date"])
    again = trips.where("pickup_date = DATE'2016-01-02'").limit(1)
    assert delta_log.write(again, folder, "overwrite", ["pickup_date"],
                           replace_partitions=[datetime.date(2016, 1, 2)]) == 1
    rows = sorted((row.trip_id, str(row.pickup_date)) for row in delta_log.read(spark, folder).collect())
    assert rows[0] == (1, "2016-01-01") and len(rows) == 2
    assert delta_log.read(spark, folder, version=0).count() == 3


def test_replacing_partitions_of_an_append_is_refused(trips, tmp_path):
    with pytest.raises(DataError, match="replacing partitions needs mode overwrite and a partitioned table"):
        delta_log.write(trips, tmp_path / "log", "append", ["pickup_date"], replace_partitions=["2016-01-01"])
