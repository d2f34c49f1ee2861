"""From one window's sums to its metric rows: profile, drift against the reference, model quality.

The rows are :mod:`mlops.monitoring.rows`; the drift measures are the registry of
:mod:`mlops.monitoring.drift_methods`.

Each window is judged against the reference slice its granularity calls for (an hourly window
against the reference rows of its hour of day; see :meth:`ReferenceProfile.slice_for`), from the
exact count of its rows in each reference bin.

Sample size is part of every decision. Bin shares are smoothed (half a row added to every
bin), so that an empty bin in a small window does not explode PSI. PSI between two samples of
one distribution is then about chi-squared with (bins - 1) degrees of freedom, scaled by
1/n + 1/m, so a small window must show a larger PSI before it counts. The KS statistic is read
at the reference's bin edges (a lower bound of the exact statistic) and its p-value is the
asymptotic two-sample one. A column drifts only when the change is both large (PSI and the
normalised Wasserstein distance over their thresholds) and unlikely by chance (PSI over its
chance level, and the KS p-value under ``alpha``).
"""
import dataclasses
import math
from statistics import NormalDist

import numpy as np

from mlops.inference import engine
from mlops.monitoring import estimation
from mlops.monitoring.drift_methods import DRIFT_METHODS, ColumnWindow
from mlops.monitoring.reference import QUANTILE_LEVELS, ReferenceProfile, ReferenceSlice
from mlops.monitoring.rows import TABLE_COLUMN, DriftRow, ProfileRow, Status, Window  # noqa: F401
from mlops.monitoring.settings import MonitoringSettings
from mlops.monitoring.statistics import QUALITY, binned_quantiles, rmse_ratio_by_chance
from mlops.monitoring.window_stats import (BIN_COUNTS, ESTIMATED_ABSOLUTE, ESTIMATED_ROWS, ESTIMATED_SQUARED,
                                           WINDOW_START)


def _key(sums: dict, name: str, profile: ReferenceProfile, settings: MonitoringSettings) -> dict:
    start = sums[WINDOW_START]
    return {"window": Window(start, start + settings.window_length), "granularity": settings.granularity,
            "model_id": sums["model_id"], "model_version": profile.model_version, "column_name": name,
            "arm": sums[engine.ARM]}


def column_metrics(sums: dict, name: str, reference: ReferenceSlice, profile: ReferenceProfile,
                   settings: MonitoringSettings) -> tuple[ProfileRow, DriftRow]:
    """(profile row, drift row) of column ``name`` in one window, judged against ``reference``."""
    expected = reference.column(name)
    rows, present = sums["rows"], sums[f"{name}__count"]
    key = _key(sums, name, profile, settings)
    out_of_range = sums[f"{name}__out_of_range"]
    counts = sums[BIN_COUNTS].get(name)
    binned = int(counts.sum()) if counts is not None else 0
    quantiles = binned_quantiles(np.cumsum(counts)[:-1] / binned, expected.edges, sums[f"{name}__min"],
                                 sums[f"{name}__max"], QUANTILE_LEVELS) if binned else None
    profile_row = ProfileRow(**key, count=present, num_nulls=rows - present,
                             percent_null=100.0 * (rows - present) / rows if rows else None,
                             avg=sums[f"{name}__avg"], stddev=sums[f"{name}__stddev"],
                             min=sums[f"{name}__min"], max=sums[f"{name}__max"],
                             percent_out_of_range=100.0 * out_of_range / present if present else None,
                             quantiles=[float(value) for value in quantiles] if binned else None)
    drift_row = DriftRow(**key, count=present)
    if binned < settings.min_rows:
        return profile_row, drift_row
    window = ColumnWindow(counts, quantiles, expected, reference.dispersion.get(name, 1.0), settings)
    measured = {}
    for measure in DRIFT_METHODS.values():
        measured.update(measure(window))
    status = drift_status(name, measured["population_stability_index"], measured["psi_by_chance"],
                          measured["ks_test"].pvalue, measured["wasserstein_distance_normalized"], settings)
    return profile_row, dataclasses.replace(drift_row, **measured, status=status)


def drift_status(name: str, population_psi: float, by_chance: float, p_value: float, normalized: float,
                 settings: MonitoringSettings) -> Status:
    """Violation only when the change is large and unlikely by chance; exempt columns are never judged."""
    if name in settings.exempt_columns:
        return Status.EXEMPT
    drifted = population_psi > max(settings.psi_threshold, by_chance) and p_value < settings.alpha \
        and normalized >= settings.wasserstein_threshold
    return Status.VIOLATION if drifted else Status.OK


def quality_status(ratio: float, rows: float, settings: MonitoringSettings,
                   squared_error_spread: float = 2.0) -> tuple[Status, float]:
    """(status, chance level) of an rmse ratio measured on ``rows`` labelled rows (or effective rows)."""
    by_chance = rmse_ratio_by_chance(rows, settings.alpha, squared_error_spread)
    over = ratio > max(settings.rmse_ratio_threshold, by_chance)
    return (Status.VIOLATION if over else Status.OK), by_chance


def estimated_quality(sums: dict, reference: ReferenceSlice, profile: ReferenceProfile,
                      settings: MonitoringSettings) -> dict:
    """The ``estimated_*`` fields of a window's ``:table`` row, from its error model's sums; none without."""
    rows, squared_sum = sums["rows"], sums.get(ESTIMATED_SQUARED)
    if squared_sum is None or not profile.error_model:
        return {}
    if rows < settings.min_rows:
        return {"estimated_quality_status": Status.INSUFFICIENT}
    estimated = math.sqrt(squared_sum / rows)
    z = float(NormalDist().inv_cdf(1 - settings.alpha / 2))
    low, high = estimation.rmse_interval(profile.error_model["calibration"], estimated,
                                         int(sums[ESTIMATED_ROWS]), z)
    ratio_low = low / reference.error["rmse"] if reference.error.get("rmse") else math.inf
    return {"estimated_root_mean_squared_error": estimated,
            "estimated_mean_absolute_error": sums[ESTIMATED_ABSOLUTE] / rows,
            "estimated_rmse_low": low, "estimated_rmse_high": high, "estimated_rmse_ratio_low": ratio_low,
            "estimated_quality_status": Status.VIOLATION if ratio_low > settings.rmse_ratio_threshold
            else Status.OK}


def quality_metrics(sums: dict, reference: ReferenceSlice, profile: ReferenceProfile,
                    settings: MonitoringSettings) -> ProfileRow:
    """The window's ``:table`` row: row count, estimated quality and, with labels, realized quality."""
    labelled = sums["labelled"]
    row = ProfileRow(**_key(sums, TABLE_COLUMN, profile, settings), count=sums["rows"],
                     labelled_count=labelled, quality_status=Status.INSUFFICIENT,
                     **estimated_quality(sums, reference, profile, settings))
    if labelled < settings.min_rows:
        return row
    squared = sums["squared_error_sum"] / labelled
    rmse = math.sqrt(squared)
    total = sums["label_square_sum"] - sums["label_sum"] ** 2 / labelled
    error = reference.error
    ratio = rmse / error["rmse"] if error.get("rmse") else math.inf
    effective = labelled / reference.dispersion.get(QUALITY, 1.0)
    status, by_chance = quality_status(ratio, effective, settings, error.get("squared_error_spread", 2.0))
    return dataclasses.replace(
        row, mean_squared_error=squared, root_mean_squared_error=rmse,
        mean_absolute_error=sums["absolute_error_sum"] / labelled,
        mean_absolute_percentage_error=(100.0 * sums["percentage_error_sum"] / sums["percentage_rows"]
                                        if sums["percentage_rows"] else None),
        r2_score=1 - sums["squared_error_sum"] / total if total > 0 else None,
        mean_error=sums["error_sum"] / labelled, rmse_ratio=ratio, rmse_ratio_by_chance=by_chance,
        quality_status=status)


def window_metrics(sums: dict, profile: ReferenceProfile, columns, settings: MonitoringSettings):
    """All profile rows and drift rows of one window and version."""
    reference = profile.slice_for(settings.window_unit, sums[WINDOW_START])
    profile_rows, drift_rows = [quality_metrics(sums, reference, profile, settings)], []
    for name in columns:
        profile_row, drift_row = column_metrics(sums, name, reference, profile, settings)
        profile_rows.append(profile_row)
        drift_rows.append(drift_row)
    return profile_rows, drift_rows
