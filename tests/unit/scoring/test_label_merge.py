"""Late labels: merge_labels fills the inference log by request id, in one commit, and only where needed."""
import datetime

from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from mlops.data.tables import TableStore
from mlops.errors import DataError, StageFailed
from mlops.inference import engine
from mlops.lifecycle.registry import ModelRef
from mlops.stages import labels as label_stage
from mlops.stages.feature_tables import SCORING, load_feature_set
from mlops.stages.scoring import ResolvedModel, write_predictions

from .conftest import SCORING_END, SCORING_START

LOG = "taxi_fares_predictions"


@pytest.fixture
def unlabelled_log(spark, feature_tables, booster, tmp_path):
    """An inference log scored without fares, by versions 1 and 2, in its own location."""

    store = TableStore(spark, str(tmp_path / "tables"))
    features = load_feature_set(TableStore(spark, str(feature_tables)),
                                SCORING_START, SCORING_END, SCORING)
    model = ResolvedModel(ModelRef("fares", "1"), "trained_model_version",
                          engine.ScoringModel.from_text(booster.model_to_string()))
    for version in ("1", "2"):
        write_predictions(store, LOG, features.drop("fare_amount"), model, engine.Provenance(
            "fares", version, "job-1", scored_at=datetime.datetime(2016, 3, 1)))
    return store, features


def merge(scoring_config, scoring_run, store, **overrides):
    config = scoring_config(table_location=store.location, execute_label_merge="true", **overrides)
    with scoring_run(config) as run:
        return run.stage("merge_labels", label_stage.merge_labels)


def fares_of(features, fraction):
    """request_id and fare of a share of the trips, as a labels source would hold them."""
    return features.withColumn(engine.REQUEST_ID, engine.request_id_column()) \
        .select(engine.REQUEST_ID, "fare_amount").sample(fraction=fraction, seed=5)


def test_labels_fill_every_version_of_the_matching_trips_in_one_commit(
        champion, unlabelled_log, scoring_config, scoring_run):
    store, features = unlabelled_log
    labels = fares_of(features, 0.4)
    store.write(labels, "taxi_fares_labels")
    versions_before = len(store.history(LOG))

    counts = merge(scoring_config, scoring_run, store)

    log = store.read(LOG)
    expected = log.join(labels, engine.REQUEST_ID).where(F.col("label") != F.col("fare_amount"))
    assert counts["rows_labelled_before"] == 0
    assert counts["rows_labelled_after"] == 2 * labels.count() > 0
    assert expected.count() == 0
    assert log.count() == 2 * features.count()
    assert len(store.history(LOG)) == versions_before + 1
    assert store.history(LOG)[0]["operation"] == "MERGE"


def test_a_second_merge_of_the_same_labels_changes_nothing(champion, unlabelled_log, scoring_config,
                                                           scoring_run):
    store, features = unlabelled_log
    store.write(fares_of(features, 0.3), "taxi_fares_labels")
    merge(scoring_config, scoring_run, store)
    versions = len(store.history(LOG))

    counts = merge(scoring_config, scoring_run, store)

    assert counts["rows_labelled_now"] == 0
    assert len(store.history(LOG)) == versions


def test_only_the_partitions_holding_labelled_trips_are_rewritten(
        champion, unlabelled_log, scoring_config, scoring_run):
    store, features = unlabelled_log
    one_day = features.where(F.to_date("tpep_pickup_datetime") == F.lit(SCORING_START))
    store.write(fares_of(one_day, 1.0), "taxi_fares_labels")
    folder = str(store.host.locate(store.uri(LOG)).driver)
    files_before = set(DeltaTable(folder).file_uris())

    merge(scoring_config, scoring_run, store)

    files_after = set(DeltaTable(folder).file_uris())
    replaced = {Path(uri).parent.name for uri in files_before - files_after}
    assert replaced == {f"pickup_date={SCORING_START}"}
    assert len(files_after - files_before) >= 1


@pytest.mark.parametrize("missing", ["request_id", "fare_amount"])
def test_a_labels_source_without_a_needed_column(champion, unlabelled_log, scoring_config, scoring_run,
                                                 missing):
    store, features = unlabelled_log
    store.write(fares_of(features, 0.2).drop(missing), "taxi_fares_labels")

    with pytest.raises(StageFailed) as caught:
        merge(scoring_config, scoring_run, store)

    assert isinstance(caught.value.cause, DataError)
    assert f"lacks column(s) {missing}; it needs request_id and fare_amount" in str(caught.value)
    assert store.read(LOG).where("label IS NOT NULL").count() == 0


def test_a_labels_source_with_two_labels_for_one_request(champion, unlabelled_log, scoring_config,
                                                         scoring_run):
    store, features = unlabelled_log
    labels = fares_of(features, 0.2)
    repeated = labels.limit(1).withColumn("fare_amount", F.lit(1.0))
    store.write(labels.unionByName(repeated), "taxi_fares_labels")

    with pytest.raises(StageFailed, match="more than one row for request_id [0-9a-f]{16}; keep one label"):
        merge(scoring_config, scoring_run, store)


def test_a_labels_table_that_does_not_exist(champion, unlabelled_log, scoring_config, scoring_run):
    store, _ = unlabelled_log

    with pytest.raises(StageFailed, match="table 'late_fares' does not exist at .*write the known fares"):
        merge(scoring_config, scoring_run, store, labels_table="late_fares")
