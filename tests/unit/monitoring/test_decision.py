"""The retraining rule and the monitor's settings, on metric rows built by hand."""
import datetime

import pytest

from mlops.config import MonitoringConfig
from mlops.errors import ConfigError
from mlops.monitoring.decision import decide
from mlops.monitoring.rows import DriftRow, Status, Window
from mlops.monitoring.statistics import psi_by_chance
from mlops.monitoring.settings import MonitoringSettings

NOW = datetime.datetime(2016, 4, 1)
OK, VIOLATION, INSUFFICIENT = Status.OK, Status.VIOLATION, Status.INSUFFICIENT


def drift_rows(states: list[Status], version: str = "1") -> list[DriftRow]:
    """One drift row per daily window, in order, with the given status."""
    day, start = datetime.timedelta(days=1), datetime.datetime(2016, 3, 1)
    return [DriftRow(Window(start + index * day, start + (index + 1) * day), "1 day",
                     f"models:/fares/{version}", version, "distance", status=state,
                     population_stability_index=0.5 if state == VIOLATION else 0.01, psi_by_chance=0.05)
            for index, state in enumerate(states)]


def test_two_of_the_last_five_windows_and_the_latest_trigger_retraining():
    decision = decide([], drift_rows([OK, OK, VIOLATION, OK, OK, VIOLATION]), MonitoringSettings(), None, NOW)

    assert decision.retrain_required
    assert decision.reason == ("retrain: 2 of the last 5 windows with data over threshold "
                               "(rule: 2 of 5, the latest included)")
    assert decision.task_values()["retrain_required"] == "true"
    # The limit shown is the larger of the threshold (0.2) and the chance level (0.05).
    assert decision.task_values()["violations"][0] == (
        "2016-03-03T00:00:00 version 1 distance: population_stability_index 0.5 > 0.2")


def test_a_version_that_does_not_serve_is_reported_but_not_acted_on():
    by_hand = drift_rows([VIOLATION] * 5, version="1")
    champion = drift_rows([OK] * 5, version="2")

    decision = decide([], by_hand + champion, MonitoringSettings(), None, NOW, serving_versions=["2"])

    assert not decision.retrain_required
    assert decision.reason == ("the latest window 2016-03-05T00:00:00 is within thresholds; 0 of the last 5 "
                               "windows with data over threshold (rule: 2 of 5, the latest included); "
                               "version(s) 1 do not serve: reported, not judged")
    assert len(decision.violations) == 5 and {v.model_version for v in decision.violations} == {"1"}
    assert decide([], by_hand + champion, MonitoringSettings(), None, NOW).retrain_required


def test_an_empty_range_says_there_are_no_rows():
    decision = decide([], [], MonitoringSettings(), None, NOW)
    assert (decision.retrain_required, decision.reason) == (
        False, "no rows: the inference log has no rows in the monitored range")


def test_k_of_n_not_met_does_not_retrain():
    decision = decide([], drift_rows([VIOLATION, OK, OK, OK, OK, VIOLATION]), MonitoringSettings(), None, NOW)

    assert not decision.retrain_required
    assert decision.reason.startswith("not enough windows over threshold: 1 of the last 5")


def test_a_quiet_latest_window_does_not_retrain():
    decision = decide([], drift_rows([VIOLATION, VIOLATION, VIOLATION, OK]), MonitoringSettings(), None, NOW)

    assert not decision.retrain_required
    assert decision.reason.startswith("the latest window 2016-03-04T00:00:00 is within thresholds")


def test_insufficient_windows_are_left_out_of_the_count():
    states = [VIOLATION, INSUFFICIENT, VIOLATION, INSUFFICIENT, INSUFFICIENT]
    decision = decide([], drift_rows(states), MonitoringSettings(retrain_windows=2), None, NOW)

    assert decision.retrain_required, decision.reason
    assert decision.windows[-1] == ("2016-03-05T00:00:00", INSUFFICIENT)


def test_no_retraining_during_the_cooldown_or_while_training_runs():
    rows = drift_rows([VIOLATION, VIOLATION])
    recent = NOW - datetime.timedelta(days=3)

    in_cooldown = decide([], rows, MonitoringSettings(cooldown_days=7), recent, NOW)
    after_cooldown = decide([], rows, MonitoringSettings(cooldown_days=2), recent, NOW)
    training = decide([], rows, MonitoringSettings(), None, NOW,
                      training_in_progress="MLflow run abc, task train")

    assert not in_cooldown.retrain_required and "within 7 days" in in_cooldown.reason
    assert after_cooldown.retrain_required
    assert not training.retrain_required
    assert training.reason.startswith("cooldown: a training run is in progress (MLflow run abc, task train);")


def test_the_psi_allowed_by_chance_shrinks_as_windows_grow():
    small, large = psi_by_chance(20, 100, 5000, 0.001), psi_by_chance(20, 100_000, 5000, 0.001)

    assert small > 0.4 > 0.01 > large


@pytest.mark.parametrize("settings, message", [
    ({"granularity": "1 fortnight"}, "granularity '1 fortnight' is not supported; use one of '1 hour'"),
    ({"psi_threshold": 0}, "psi_threshold must be a number above 0 and at most 10, got 0"),
    ({"psi_threshold": float("nan")}, "psi_threshold must be a number above 0"),
    ({"wasserstein_threshold": -1}, "wasserstein_threshold must be a number above 0"),
    ({"rmse_ratio_threshold": 0.9}, "rmse_ratio_threshold must be a number above 1 and at most 100"),
    ({"alpha": 0.7}, "alpha must be a number above 0 and at most 0.5, got 0.7"),
    ({"min_rows": 0}, "min_rows must be a whole number >= 1, got 0"),
    ({"cooldown_days": 1.5}, "cooldown_days must be a whole number >= 0, got 1.5"),
    ({"retrain_windows": 3, "retrain_min_violations": 4}, "retrain_min_violations \\(4\\) cannot exceed"),
])
def test_bad_settings_are_refused_with_the_reason(settings, message):
    with pytest.raises(ConfigError, match=message):
        MonitoringSettings(**settings)


@pytest.mark.parametrize("params, message", [
    ({"monitoring_granularity": "1 fortnight"},
     "parameter 'monitoring_granularity': granularity '1 fortnight'"),
    ({"drift_alpha": "0.9"},
     "parameter 'drift_alpha': alpha must be a number above 0 and at most 0.5, got 0.9"),
    ({"psi_threshold": "-0.1"}, "parameter 'psi_threshold': psi_threshold must be a number above 0"),
    ({"monitoring_start_date": "2016-03-10", "monitoring_end_date": "2016-03-01"},
     "parameter 'monitoring_start_date' \\(2016-03-10\\) is after 'monitoring_end_date' \\(2016-03-01\\)"),
    ({"monitoring_end_date": "March"}, "parameter 'monitoring_end_date' must be a date as YYYY-MM-DD"),
    ({"retrain_on": "mood"},
     "parameter 'retrain_on' must be one of drift, quality, drift_or_quality, estimated_quality"),
    ({"drift_exempt_columns": "weekday"}, "parameter 'drift_exempt_columns' names weekday, which the model "
                                          "does not use; monitored columns: trip_distance"),
])
def test_bad_monitoring_job_parameters_name_the_parameter(params, message):
    with pytest.raises(ConfigError, match=message):
        MonitoringConfig.from_params(params)


def test_the_default_range_is_the_last_windows_up_to_the_end_date():
    config = MonitoringConfig.from_params({"monitoring_end_date": "2016-03-31", "monitoring_windows": "7"})
    weekly = MonitoringConfig.from_params({"monitoring_end_date": "2016-03-31", "monitoring_windows": "2",
                                           "monitoring_granularity": "1 week"})

    assert config.monitoring_range() == (datetime.date(2016, 3, 25), datetime.date(2016, 3, 31))
    assert weekly.monitoring_range() == (datetime.date(2016, 3, 18), datetime.date(2016, 3, 31))
    today = datetime.date(2026, 1, 10)
    assert MonitoringConfig().monitoring_range(today=today) == (today - datetime.timedelta(days=6), today)
