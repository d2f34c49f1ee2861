"""The drift measures, one function each, in a registry the monitor runs in turn.

A measure reads one column's window (its rows per reference bin, and the reference) and returns
the drift row fields it fills. Adding a measure is adding a function here and its fields to
:class:`~mlops.monitoring.rows.DriftRow`.
"""
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

from mlops.monitoring.reference import ColumnReference
from mlops.monitoring.rows import KsTest
from mlops.monitoring.settings import MonitoringSettings
from mlops.monitoring.statistics import psi, psi_by_chance


@dataclass(frozen=True)
class ColumnWindow:
    """One column in one window, against its reference."""

    counts: np.ndarray  # the window's rows in each reference bin
    quantiles: np.ndarray  # the window's quantiles, read from those bins
    expected: ColumnReference
    clustering: float  # how much the reference's rows cluster (1: independent)
    settings: MonitoringSettings

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    @property
    def cumulative_share(self) -> np.ndarray:
        return np.cumsum(self.counts)[:-1] / self.rows


DRIFT_METHODS: dict[str, Callable[[ColumnWindow], dict]] = {}


def drift_method(name: str):
    def register(measure):
        DRIFT_METHODS[name] = measure
        return measure
    return register


@drift_method("population_stability_index")
def population_stability_index(window: ColumnWindow) -> dict:
    """PSI of the smoothed bin shares, and the PSI that chance alone reaches at this window's size."""
    expected = window.expected
    return {"population_stability_index": psi(window.counts, expected.bin_shares() * expected.count),
            "psi_by_chance": psi_by_chance(len(expected.edges) + 1, window.rows, expected.count,
                                           window.settings.alpha, window.clustering)}


@drift_method("ks_test")
def ks_test(window: ColumnWindow) -> dict:
    """The KS statistic at the reference's bin edges (a lower bound), and its asymptotic p-value."""
    expected = window.expected
    statistic = float(np.max(np.abs(window.cumulative_share - np.asarray(expected.cumulative_share)))) \
        if len(expected.edges) else 0.0
    effective = window.rows * expected.count / (window.rows + expected.count) / window.clustering
    return {"ks_test": KsTest(statistic, float(stats.kstwobign.sf(statistic * math.sqrt(effective))))}


@drift_method("wasserstein_distance")
def wasserstein_distance(window: ColumnWindow) -> dict:
    """The mean distance between quantiles, raw and in reference standard deviations."""
    expected = window.expected
    distance = float(np.mean(np.abs(window.quantiles - expected.binned_quantiles())))
    normalized = distance / expected.std if expected.std > 0 else (0.0 if distance == 0 else math.inf)
    return {"wasserstein_distance": distance, "wasserstein_distance_normalized": normalized}
