"""Monitoring a real Delta inference log in Spark: identical data stays quiet, real shifts are flagged."""
import datetime

import pytest
from deltalake import DeltaTable

from mlops.errors import DataError
from mlops.monitoring import monitor
from mlops.monitoring.decision import decide
from mlops.inference import engine
from mlops.monitoring.rows import DRIFT_SCHEMA, TABLE_COLUMN, Status, to_record
from mlops.monitoring.settings import MonitoringSettings
from mlops.platform import driver_path

from .conftest import FEATURES, FIRST_DAY, LOG_TABLE, MODEL_NAME, log_rows, reference_profile

NOW = datetime.datetime(2016, 4, 1)


def day(offset: int) -> datetime.date:
    return FIRST_DAY + datetime.timedelta(days=offset)


def run_monitor(tables, days: int, settings=None, **options):
    return monitor.monitor_range(tables, LOG_TABLE, MODEL_NAME, FEATURES,
                                 settings or MonitoringSettings(), FIRST_DAY, day(days - 1), **options)


def test_twenty_windows_of_identical_data_raise_no_violation(tables, write_log):
    sizes = [100, 100, 150, 200, 300, 500, 1000, 2000, 4000, 100] * 2
    write_log([log_rows(day(offset), rows, seed=offset) for offset, rows in enumerate(sizes)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())

    result = run_monitor(tables, len(sizes))

    statuses = [row.status for row in result.drift_rows]
    quality = [row.quality_status for row in result.profile_rows
               if row.column_name == TABLE_COLUMN]
    assert len(statuses) == len(sizes) * (len(FEATURES) + 1)
    violations = [(row.window.start, row.column_name, row.count,
                   row.population_stability_index, row.psi_by_chance)
                  for row in result.drift_rows if row.status != Status.OK]
    assert not violations and set(quality) == {Status.OK}
    small = [row for row in result.drift_rows if row.count == 100]
    # A fixed PSI threshold of 0.1 would fire on most of these; chance alone is allowed for.
    assert all(row.psi_by_chance > 0.1 for row in small)
    decision = decide(result.profile_rows, result.drift_rows, MonitoringSettings(), None, NOW)
    assert not decision.retrain_required


def test_a_shift_in_one_feature_flags_that_feature_and_no_other(tables, write_log):
    write_log([log_rows(day(offset), 2000, seed=offset, distance_shift=1.5) for offset in range(3)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())

    result = run_monitor(tables, 3)

    flagged = {(row.window.start.date(), row.column_name)
               for row in result.drift_rows if row.status == Status.VIOLATION}
    # distance moved; the prediction is computed from it, so it moves too.
    assert flagged == {(day(offset), column) for offset in range(3) for column in ("distance", "prediction")}
    distance = [row for row in result.drift_rows if row.column_name == "distance"]
    assert all(row.ks_test.pvalue < 1e-6 and row.wasserstein_distance_normalized > 0.5
               for row in distance)


def test_an_exempt_column_is_measured_but_never_a_violation(tables, write_log):
    write_log([log_rows(day(0), 2000, seed=0, distance_shift=1.5)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())

    result = run_monitor(tables, 1, MonitoringSettings(exempt_columns=("distance",)))

    statuses = {row.column_name: row.status for row in result.drift_rows}
    assert statuses == {"distance": Status.EXEMPT, "hour": Status.OK, "duration": Status.OK,
                        "prediction": Status.VIOLATION}
    distance = next(row for row in result.drift_rows if row.column_name == "distance")
    assert distance.population_stability_index > 0.2


def test_fare_inflation_with_labels_degrades_quality_and_requires_retraining(tables, write_log):
    write_log([log_rows(day(offset), 1000, seed=offset, label_scale=1.5 if offset >= 3 else 1.0)
               for offset in range(6)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())

    result = run_monitor(tables, 6, require_labels=True)

    quality = {row.window.start.date(): row for row in result.profile_rows
               if row.column_name == TABLE_COLUMN}
    assert [quality[day(offset)].quality_status for offset in range(6)] == \
        [Status.OK] * 3 + [Status.VIOLATION] * 3
    assert all(quality[day(offset)].rmse_ratio > 3 for offset in range(3, 6))
    decision = decide(result.profile_rows, result.drift_rows, MonitoringSettings(), None, NOW)
    assert decision.retrain_required, decision.reason
    assert decision.task_values()["violated_windows"] == [f"{day(offset)}T00:00:00" for offset in range(3, 6)]


def test_small_windows_are_insufficient_data_never_violations(tables, write_log):
    write_log([log_rows(day(offset), 50, seed=offset, distance_shift=5.0) for offset in range(4)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())

    result = run_monitor(tables, 4)

    assert {row.status for row in result.drift_rows} == {Status.INSUFFICIENT}
    decision = decide(result.profile_rows, result.drift_rows, MonitoringSettings(), None, NOW)
    assert not decision.retrain_required and decision.reason.startswith("insufficient data")


def test_recomputing_a_window_replaces_its_rows_in_one_commit(tables, write_log):
    write_log([log_rows(day(offset), 300, seed=offset) for offset in range(2)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())
    drift_name = monitor.metric_table_names(LOG_TABLE)["drift"]

    run_monitor(tables, 2)
    first = DeltaTable(str(driver_path(tables.uri(drift_name)))).to_pyarrow_table().num_rows
    version = tables.version(drift_name)
    run_monitor(tables, 2)

    assert tables.read(drift_name).count() == first == 2 * (len(FEATURES) + 1)
    assert tables.version(drift_name) == version + 1


def test_a_version_without_reference_profile_names_the_command_that_builds_it(tables, write_log):
    write_log([log_rows(day(0), 200, seed=1, version="3")])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile(version="1"))

    with pytest.raises(DataError, match=r"version\(s\) 3 .*`mlops model profile fares 3`"):
        run_monitor(tables, 1)


def test_a_quality_rule_without_labels_names_the_label_merge(tables, write_log):
    write_log([log_rows(day(0), 200, seed=1, with_labels=False)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())

    with pytest.raises(DataError, match="has no labels.*merge_labels task \\(execute_label_merge=true\\)"):
        run_monitor(tables, 1, require_labels=True)


def test_an_inference_log_that_does_not_exist(tables):
    with pytest.raises(DataError, match="inference log predictions does not exist; run the scoring job"):
        run_monitor(tables, 1)


def with_arm(frame, arm: str):
    frame[engine.ARM] = arm
    return frame


def test_each_arm_is_profiled_apart_and_only_the_champion_s_is_judged(tables, write_log):
    # Version 2 answers a fifth of the traffic as Challenger and shadows the rest; its fares are off.
    write_log([with_arm(log_rows(day(0), 2000, seed=1), engine.CHAMPION_ARM),
               with_arm(log_rows(day(0), 500, seed=2, version="2", label_scale=1.5), engine.CHALLENGER_ARM),
               with_arm(log_rows(day(0), 2000, seed=3, version="2", label_scale=1.5), engine.SHADOW_ARM)])
    for version in ("1", "2"):
        monitor.write_baseline(tables, LOG_TABLE, reference_profile(version=version))

    result = run_monitor(tables, 1)

    quality = {(row.model_version, row.arm): row for row in result.profile_rows if row.is_table}
    assert {key: row.count for key, row in quality.items()} == {
        ("1", engine.CHAMPION_ARM): 2000, ("2", engine.CHALLENGER_ARM): 500, ("2", engine.SHADOW_ARM): 2000}
    assert quality[("1", engine.CHAMPION_ARM)].quality_status == Status.OK
    assert quality[("2", engine.SHADOW_ARM)].quality_status == Status.VIOLATION
    assert len({(row.model_version, row.arm) for row in result.drift_rows}) == 3
    stored = tables.read(monitor.metric_table_names(LOG_TABLE)["profile"]).where(
        f"column_name = '{TABLE_COLUMN}'").select("model_version", "arm", "count").collect()
    assert sorted(tuple(row) for row in stored) == sorted(
        (version, arm, row.count) for (version, arm), row in quality.items())
    decision = decide(result.profile_rows, result.drift_rows, MonitoringSettings(), None, NOW)
    assert not decision.retrain_required
    assert "the challenger and shadow arm(s) are compared online, not judged here" in decision.reason


def test_a_metric_table_from_before_arms_gains_the_column_and_keeps_one_row_per_key(tables, write_log, spark):
    write_log([log_rows(day(offset), 300, seed=offset) for offset in range(2)])
    monitor.write_baseline(tables, LOG_TABLE, reference_profile())
    drift_name = monitor.metric_table_names(LOG_TABLE)["drift"]
    result = run_monitor(tables, 1)
    older = spark.createDataFrame([to_record(row) for row in result.drift_rows], DRIFT_SCHEMA).drop("arm")
    tables.write(older, drift_name, partition_by=monitor.METRIC_PARTITIONS)

    run_monitor(tables, 2)

    stored = tables.read(drift_name)
    assert "arm" in stored.columns
    # The first day's rows, written without an arm, were replaced rather than doubled.
    assert stored.count() == 2 * (len(FEATURES) + 1)
