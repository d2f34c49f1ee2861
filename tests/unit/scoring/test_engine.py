"""The scoring engine on a local Spark: output columns, exact predictions, one model load per worker."""
import dataclasses
import datetime
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from taxi_fares import features, training

from mlops.inference import engine as scoring
from mlops.errors import DataError, RegistryError

from .conftest import train_booster

SCORED_AT = datetime.datetime(2016, 3, 1, 6, 30, tzinfo=datetime.timezone.utc)


PROVENANCE = scoring.Provenance(model_name="fares", model_version="7", job_run_id="job-42",
                                mlflow_run_id="run-9", model_alias="Champion", scored_at=SCORED_AT)


def score(feature_df, booster, load_marker_dir=None):
    model = scoring.ScoringModel.from_text(booster.model_to_string())
    model = dataclasses.replace(model, load_marker_dir=load_marker_dir)
    return scoring.score_features(feature_df, model, PROVENANCE)


def test_output_is_the_inference_log_row_of_each_trip(feature_set, booster):
    output = score(feature_set, booster)

    assert output.columns == ["request_id", "trip_id", "timestamp", *features.FEATURE_COLUMNS, "prediction",
                              "label", "model_name", "model_version", "model_alias", "model_id",
                              "mlflow_run_id", "job_run_id", "scored_at", "pickup_date", "late_features",
                              "arm"]
    types = {field.name: field.dataType.simpleString() for field in output.schema.fields}
    assert {name: types[name] for name in ("request_id", "trip_id", "timestamp", "prediction", "label",
                                           "model_version", "scored_at", "pickup_date")} == {
        "request_id": "string", "trip_id": "bigint", "timestamp": "timestamp", "prediction": "double",
        "label": "double", "model_version": "string", "scored_at": "timestamp", "pickup_date": "date"}
    first = output.orderBy("trip_id").first()
    source = feature_set.where(feature_set.trip_id == first.trip_id).first()
    assert (first.model_name, first.model_version, first.model_alias, first.model_id) == (
        "fares", "7", "Champion", "models:/fares/7")
    assert (first.job_run_id, first.mlflow_run_id) == ("job-42", "run-9")
    # Batch rows: windows complete, and the Champion alias is the champion arm.
    assert (first.late_features, first.arm) == (False, "champion")
    assert first.scored_at == SCORED_AT.replace(tzinfo=None)
    assert first.timestamp == source.tpep_pickup_datetime
    assert first.pickup_date == first.timestamp.date()
    assert first.label == source.fare_amount
    assert [first[name] for name in features.FEATURE_COLUMNS] == [
        source[name] for name in features.FEATURE_COLUMNS]


def test_request_id_is_stable_and_unique_per_trip(feature_set, booster):
    once = score(feature_set, booster).select("trip_id", "request_id")
    again = score(feature_set.repartition(3), booster).select("trip_id", "request_id")

    assert once.select("request_id").distinct().count() == feature_set.count()
    assert sorted(once.collect()) == sorted(again.collect())
    assert int(once.first().request_id, 16) == once.first().trip_id % 2**64


def test_without_actuals_the_label_is_null(feature_set, booster):
    output = score(feature_set.drop(features.LABEL_COLUMN), booster)

    assert output.where("label IS NOT NULL").count() == 0
    assert output.count() == feature_set.count()


def test_predictions_equal_raw_lightgbm_predict_on_the_same_features(feature_set, feature_frame, booster):
    scored = score(feature_set, booster).select("trip_id", "timestamp", "prediction") \
        .toPandas().sort_values("trip_id", kind="stable")
    expected = feature_frame.assign(
        prediction=training.predict(booster, feature_frame[list(features.FEATURE_COLUMNS)])
    ).sort_values("trip_id", kind="stable")

    assert len(scored) == len(expected) > 2000
    assert scored["trip_id"].tolist() == expected["trip_id"].tolist()
    assert (scored["timestamp"].to_numpy() == expected["tpep_pickup_datetime"].to_numpy()).all()
    np.testing.assert_allclose(scored["prediction"].to_numpy(), expected["prediction"].to_numpy(),
                               rtol=0, atol=1e-9)


def test_model_is_loaded_once_per_python_worker_not_per_batch(spark, feature_set, feature_frame, tmp_path):
    # A model of its own: workers reused from earlier tests have not cached it yet.
    booster = train_booster(feature_frame, rounds=7)
    markers = tmp_path / "loads"
    rows_per_batch = 50
    partitions = 8
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(rows_per_batch))
    try:
        # count() alone would let Spark prune the prediction; counting the predictions runs it.
        scored = score(feature_set.repartition(partitions), booster, load_marker_dir=str(markers))
        rows = scored.agg(F.count("prediction")).first()[0]
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)

    loads = [json.loads(path.read_text()) for path in markers.glob("load-*.json")]
    pids = [load["pid"] for load in loads]
    batches_at_least = rows // rows_per_batch
    assert batches_at_least > 40
    assert loads, "no worker recorded a model load"
    assert len(pids) == len(set(pids)), f"a worker loaded the model more than once: {pids}"
    # local[2] runs two Python workers, reused for all eight partitions and every batch.
    assert len(loads) <= 2 < partitions < batches_at_least
    assert {load["model_digest"] for load in loads} == {
        scoring.ScoringModel.from_text(booster.model_to_string()).digest}


def test_missing_feature_column_is_a_data_error_naming_it(feature_set, booster):
    with pytest.raises(DataError, match="lacks column\\(s\\) trip_distance needed for scoring"):
        score(feature_set.drop("trip_distance"), booster)


def test_model_read_from_an_mlflow_model_folder(tmp_path, booster, feature_set):
    import mlflow

    folder = tmp_path / "model"
    # Requirements given: inferring them starts a child process that makes ./mlruns where it runs.
    mlflow.lightgbm.save_model(booster, str(folder),
                               pip_requirements=mlflow.lightgbm.get_default_pip_requirements())

    model = scoring.load_scoring_model(str(folder))

    assert model.feature_names == tuple(booster.feature_name())
    assert model.digest == scoring.ScoringModel.from_text(booster.model_to_string()).digest


def test_a_folder_that_is_not_a_model_is_rejected(tmp_path):
    with pytest.raises(RegistryError, match="is neither a LightGBM model file nor an MLflow model folder"):
        scoring.load_scoring_model(str(tmp_path))


def test_a_model_without_lightgbm_flavor_is_rejected(tmp_path):
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[float]) -> list[float]:
            return [1.0] * len(model_input)

    folder = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(str(folder), python_model=Constant())

    with pytest.raises(RegistryError, match="has no lightgbm flavor; found python_function"):
        scoring.load_scoring_model(str(folder))


def test_session_settings_apply_inside_and_the_session_values_return_after(spark):
    batch_key, absent_key = "spark.sql.execution.arrow.maxRecordsPerBatch", "parquet.enable.dictionary#probe"
    previous = spark.conf.get(batch_key)
    spark.conf.set(batch_key, "123")
    try:
        with scoring.session_settings(spark, {batch_key: 50_000, absent_key: "false"}):
            inside = (spark.conf.get(batch_key), spark.conf.get(absent_key))
        after = (spark.conf.get(batch_key), spark.conf.get(absent_key, None))
    finally:
        spark.conf.set(batch_key, previous)

    assert inside == ("50000", "false")
    assert after == ("123", None)


def test_log_files_skip_dictionaries_only_on_near_unique_columns(feature_set, booster, spark, tmp_path):
    log = score(feature_set, booster)
    with scoring.session_settings(spark, scoring.log_write_settings(features.FEATURE_COLUMNS)):
        log.coalesce(1).write.format("delta").partitionBy("pickup_date").save(str(tmp_path / "log"))

    data_file = next((tmp_path / "log").glob("pickup_date=*/*.parquet"))
    row_group = pq.ParquetFile(data_file).metadata.row_group(0)
    dictionary = {row_group.column(index).path_in_schema: row_group.column(index).has_dictionary_page
                  for index in range(row_group.num_columns)}
    assert not any(dictionary[name] for name in ("request_id", "trip_id", "prediction", "label"))
    assert all(dictionary[name] for name in ("model_name", "model_id", "mlflow_run_id", "job_run_id"))
