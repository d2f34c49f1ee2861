"""Streaming scoring: trips landing as files are scored once, with the Champion of each batch's start."""
import datetime
import uuid

import pytest
from pyspark.sql import functions as F

from mlops.data.generator import land_file
from mlops.data.tables import TableStore
from mlops.errors import StageFailed, ValidationFailed
from mlops.inference import engine
from mlops.lifecycle.registry import RegistryClient
from mlops.stages import streaming

from .conftest import MODEL_NAME, SCORING_START, register, train_booster

LOG = "taxi_fares_predictions"


@pytest.fixture
def landing(spark, raw_trips_path, tmp_path):
    """land(day) writes that day's raw trips as one new Parquet file in the landing folder."""
    folder = tmp_path / "landing"
    folder.mkdir()
    raw = spark.read.parquet(str(raw_trips_path))

    def land(*days, frame=None):
        dates = [SCORING_START + datetime.timedelta(days=day) for day in days]
        rows = frame if frame is not None else raw.where(F.to_date("tpep_pickup_datetime").isin(dates))
        land_file(rows, folder)
        return rows

    land.folder = folder
    land.raw = raw
    return land


@pytest.fixture
def task_of(spark, scoring_home, tmp_path):
    """task_of(config, stage) runs ``stage`` as a task of the streaming job, as the notebook does."""
    from mlops.local.dbutils import LocalDbutils
    from mlops.local.session import LocalSession
    from mlops.orchestration import task_run
    from mlops.platform.context import RunContext, bind as notebook_context

    def run(config, name, stage):
        job_run_id = f"stream-{uuid.uuid4().hex[:6]}"
        session = LocalSession(spark=spark, job_name="taxi_fares_streaming", job_run_id=job_run_id)
        session.task_key = name
        context = RunContext(job_name=session.job_name, job_run_id=job_run_id, task=name)
        with notebook_context(context), task_run(name, config, spark, LocalDbutils(session)) as task:
            return task.stage(name, stage)

    return run


@pytest.fixture
def stream_run(spark, task_of, tmp_path):
    """Run the `stream_score` task on a config."""
    from mlops.config import StreamingConfig

    def run(landing_folder, **overrides):
        params = {"taxi_fares_stream_source": str(landing_folder), "registered_model_name": MODEL_NAME,
                  "experiment_name": "streaming-tests", "table_location": str(tmp_path / "tables"),
                  "checkpoint_location": str(tmp_path / "checkpoints"), "max_files_per_trigger": "1",
                  "online_store_path": str(tmp_path / "online")}
        params.update({name: str(value) for name, value in overrides.items()})
        return task_of(StreamingConfig.from_params(params), "stream_score", streaming.score_stream)

    run.tables = lambda: TableStore(spark, str(tmp_path / "tables"))
    run.checkpoint = tmp_path / "checkpoints" / LOG
    return run


def clean_count(frame):
    from taxi_fares.features import clean_trips

    return clean_trips(frame).count()


def test_two_landed_files_are_two_batches_scored_once_like_the_batch_job(
        spark, champion, landing, stream_run, feature_set, booster):
    first = landing(0, 1, 2)
    second = landing(3, 4, 5, 6)

    summary = stream_run(landing.folder)

    assert [report.rows for report in summary.batches] == [clean_count(first), clean_count(second)]
    assert {report.model_version for report in summary.batches} == {champion}
    log = stream_run.tables().read(LOG)
    assert log.count() == summary.rows == log.select(engine.REQUEST_ID).distinct().count()
    # The windows built batch by batch are the batch job's windows: the same predictions.
    expected = engine.score_features(feature_set, engine.ScoringModel.from_text(booster.model_to_string()),
                                     engine.Provenance(MODEL_NAME, champion, "batch"))
    compared = log.alias("s").join(expected.alias("b"), engine.REQUEST_ID).select(
        F.max(F.abs(F.col("s.prediction") - F.col("b.prediction"))).alias("gap"), F.count("*").alias("rows"))
    gap = compared.first()
    assert gap["rows"] == summary.rows and gap["gap"] < 1e-9
    assert all(report.latency_p99_seconds is not None for report in summary.batches)
    assert (stream_run.checkpoint / "commits" / "1").exists()

    # Nothing new: the next run applies no batch and the log keeps its version.
    versions = len(stream_run.tables().history(LOG))
    assert stream_run(landing.folder).batches == ()
    assert len(stream_run.tables().history(LOG)) == versions


def test_a_replayed_batch_changes_nothing_even_after_the_champion_moved(
        spark, champion, landing, stream_run, feature_frame):
    landing(0, 1)
    landing(2, 3)
    stream_run(landing.folder)
    tables = stream_run.tables()
    rows, versions = tables.read(LOG).count(), len(tables.history(LOG))
    # A crash after the batch's commits but before the checkpoint recorded it: Spark replays batch 1.
    for name in ("1", ".1.crc"):
        (stream_run.checkpoint / "commits" / name).unlink()
    newer = register(train_booster(feature_frame, rounds=5), alias="Champion")

    try:
        replayed = stream_run(landing.folder)
    finally:
        RegistryClient(MODEL_NAME).set_alias("Champion", champion)

    assert [report.batch_id for report in replayed.batches] == [1]
    assert tables.read(LOG).count() == rows
    assert tables.read(LOG).where(F.col(engine.MODEL_VERSION) == newer).count() == 0
    assert len(tables.history(LOG)) == versions


def test_each_batch_scores_with_the_champion_of_its_start_and_never_with_a_version_not_passed(
        spark, scoring_home, landing, stream_run, feature_frame):
    name = f"{MODEL_NAME}_follow"
    first = register(train_booster(feature_frame, rounds=5), alias="Champion", name=name)
    landing(0, 1)
    started = stream_run(landing.folder, registered_model_name=name)
    assert {report.model_version for report in started.batches} == {first}

    second = register(train_booster(feature_frame, rounds=8), alias="Champion", name=name)
    landing(2, 3)
    moved = stream_run(landing.folder, registered_model_name=name)
    assert [report.model_version for report in moved.batches] == [second]

    failed = register(train_booster(feature_frame, rounds=9), alias=None, name=name, status="FAILED")
    client = RegistryClient(name)
    follower = streaming.ChampionFollower(client, "Champion", scoring_home / "models")
    assert follower.at_batch_start().ref.version == second
    client.set_alias("Champion", failed)
    kept = follower.at_batch_start()
    assert kept.ref.version == second
    assert follower.note == (f"alias Champion names version {failed}, whose model_validation_status is "
                             f"FAILED, not PASSED: kept version {second}")

    # Restarted while the alias names the FAILED version: it keeps the version its last batch used.
    landing(4)
    restarted = stream_run(landing.folder, registered_model_name=name)
    assert [(report.model_version, report.model_note) for report in restarted.batches] == [
        (second, follower.note)]
    log = stream_run.tables().read(LOG)
    assert log.where(F.col(engine.MODEL_VERSION) == failed).count() == 0
    # A stream with no batch behind it has no version to keep: it does not start.
    with pytest.raises(ValidationFailed, match=f"cannot start scoring the stream: alias Champion names "
                                               f"version {failed}, whose .* is FAILED, not PASSED"):
        streaming.ChampionFollower(client, "Champion", scoring_home / "models").at_batch_start()


def test_a_failed_batch_stops_the_stream_naming_the_error_and_a_restart_resumes_it(
        spark, champion, landing, stream_run, feature_frame):
    landing(0, 1)
    stream_run(landing.folder)
    not_lightgbm = _register_linear_model(feature_frame)
    second = landing(2, 3)

    try:
        with pytest.raises(StageFailed, match="streaming stopped at a failed batch .*has no lightgbm flavor"):
            stream_run(landing.folder)
    finally:
        RegistryClient(MODEL_NAME).set_alias("Champion", champion)
    log = stream_run.tables().read(LOG)
    assert log.where(F.col(engine.MODEL_VERSION) == not_lightgbm).count() == 0

    resumed = stream_run(landing.folder)

    assert [report.batch_id for report in resumed.batches] == [1]
    assert resumed.batches[0].rows == clean_count(second)
    log = stream_run.tables().read(LOG)
    first_four_days = landing.raw.where(
        F.to_date("tpep_pickup_datetime") <= SCORING_START + datetime.timedelta(days=3))
    assert log.count() == log.select(engine.REQUEST_ID).distinct().count() == clean_count(first_four_days)


def _register_linear_model(feature_frame):
    """A PASSED Champion that is not a LightGBM model: every batch that loads it fails."""
    import mlflow
    from sklearn.linear_model import LinearRegression
    from taxi_fares import features

    from .conftest import _training_experiment

    fitted = LinearRegression().fit(feature_frame[["trip_distance"]], feature_frame[features.LABEL_COLUMN])
    with mlflow.start_run(experiment_id=_training_experiment()):
        info = mlflow.sklearn.log_model(fitted, name="model", registered_model_name=MODEL_NAME,
                                        pip_requirements=mlflow.sklearn.get_default_pip_requirements())
    version = str(info.registered_model_version)
    RegistryClient(MODEL_NAME).set_validation_status(version, "PASSED")
    RegistryClient(MODEL_NAME).set_alias("Champion", version)
    return version


def test_a_file_with_other_columns_stops_the_stream_naming_them(spark, champion, landing, stream_run):
    landing(0)
    renamed = landing.raw.limit(50).withColumnRenamed("fare_amount", "fare")
    landing(frame=renamed)

    with pytest.raises(StageFailed, match="does not have the raw trip columns: missing fare_amount; "
                                          "not in the raw schema fare"):
        stream_run(landing.folder)


def test_a_source_that_does_not_exist_is_named(spark, champion, stream_run, tmp_path):
    with pytest.raises(StageFailed, match="stream source .*nowhere .*taxi_fares_stream_source.*not exist"):
        stream_run(tmp_path / "nowhere")


def test_late_trips_are_scored_and_marked_and_a_restart_keeps_the_watermark_and_labels_merge(
        spark, champion, landing, stream_run, task_of, tmp_path):
    from mlops.config import ScoringConfig
    from mlops.stages.labels import merge_labels

    newest = landing(3)
    late_day = landing(1)
    first = stream_run(landing.folder)
    # Restarted: the watermark (the newest pickup so far, less 60 minutes) comes back with it.
    later_day = landing(2)
    restarted = stream_run(landing.folder)

    reports = [*first.batches, *restarted.batches]
    assert [report.late_rows for report in reports] == [0, clean_count(late_day), clean_count(later_day)]
    assert restarted.batches[0].watermark == first.batches[1].watermark != ""
    tables = stream_run.tables()
    log = tables.read(LOG)
    per_day = log.groupBy(F.col(engine.PICKUP_DATE).alias("day")).agg(
        F.count("*").alias("rows"), F.count_if(engine.LATE_FEATURES).alias("late"))
    late_per_day = {row["day"]: (row["rows"], row["late"]) for row in per_day.collect()}
    days = [SCORING_START + datetime.timedelta(days=day) for day in (1, 2, 3)]
    assert late_per_day == {days[0]: (clean_count(late_day), clean_count(late_day)),
                            days[1]: (clean_count(later_day), clean_count(later_day)),
                            days[2]: (clean_count(newest), 0)}
    assert log.where(F.col(engine.PREDICTION).isNull()).count() == 0
    batches = tables.read(streaming.BATCHES_TABLE).orderBy("batch_id").collect()
    assert [(row.batch_id, row.late_rows) for row in batches] == [
        (0, 0), (1, reports[1].late_rows), (2, reports[2].late_rows)]

    # Labels arriving later reach streamed rows as they reach batch rows.
    late_ids = log.where(engine.LATE_FEATURES).select(engine.REQUEST_ID, F.lit(99.0).alias("fare_amount"))
    tables.write(late_ids, "taxi_fares_labels")
    config = ScoringConfig.from_params({"registered_model_name": MODEL_NAME,
                                        "experiment_name": "streaming-tests",
                                        "table_location": str(tmp_path / "tables")})
    counts = task_of(config, "merge_labels", merge_labels)
    assert counts["rows_labelled_after"] == log.count()
    relabelled = tables.read(LOG).where(F.col(engine.LABEL) == 99.0)
    assert relabelled.count() == relabelled.where(engine.LATE_FEATURES).count() == late_ids.count()
