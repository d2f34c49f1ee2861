"""What the monitor watches and when it calls a change a violation: checked once, with clear errors."""
import datetime
import math
from dataclasses import dataclass

from mlops.errors import ConfigError

# Supported window lengths: the date_trunc unit that starts a window, and its length.
GRANULARITIES = {
    "1 hour": ("hour", datetime.timedelta(hours=1)),
    "1 day": ("day", datetime.timedelta(days=1)),
    "1 week": ("week", datetime.timedelta(weeks=1)),
}


@dataclass(frozen=True)
class MonitoringSettings:
    """Windows, thresholds and the retraining rule.

    A column drifts when its PSI exceeds both ``psi_threshold`` and what chance alone gives at
    this window's size (the ``1 - alpha`` quantile of PSI between two samples of one
    distribution), and its Wasserstein distance, in reference standard deviations, reaches
    ``wasserstein_threshold``. Quality degrades when the rmse exceeds the reference rmse by
    ``rmse_ratio_threshold`` and by more than chance gives at the window's labelled rows.
    Drift of ``exempt_columns`` is measured and recorded but never a violation: a daily window
    holds one weekday, so a day-of-week feature always differs from a week-long reference.
    """

    granularity: str = "1 day"
    psi_threshold: float = 0.2
    wasserstein_threshold: float = 0.1
    rmse_ratio_threshold: float = 1.25
    alpha: float = 0.001
    min_rows: int = 100
    retrain_windows: int = 5
    retrain_min_violations: int = 2
    cooldown_days: int = 7
    # Profiled but never judged for drift: calendar features, whose value a short window fixes.
    exempt_columns: tuple = ()

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity {self.granularity!r} is not supported; "
                              f"use one of {', '.join(repr(name) for name in GRANULARITIES)}",
                              field="granularity")
        _check_range("psi_threshold", self.psi_threshold, 0.0, 10.0)
        _check_range("wasserstein_threshold", self.wasserstein_threshold, 0.0, 10.0)
        _check_range("rmse_ratio_threshold", self.rmse_ratio_threshold, 1.0, 100.0)
        _check_range("alpha", self.alpha, 0.0, 0.5)
        _check_whole("min_rows", self.min_rows, 1)
        _check_whole("retrain_windows", self.retrain_windows, 1)
        _check_whole("retrain_min_violations", self.retrain_min_violations, 1)
        _check_whole("cooldown_days", self.cooldown_days, 0)
        if self.retrain_min_violations > self.retrain_windows:
            raise ConfigError(f"retrain_min_violations ({self.retrain_min_violations}) cannot exceed "
                              f"retrain_windows ({self.retrain_windows}): the rule could never hold",
                              field="retrain_min_violations")

    @property
    def window_unit(self) -> str:
        return GRANULARITIES[self.granularity][0]

    @property
    def window_length(self) -> datetime.timedelta:
        return GRANULARITIES[self.granularity][1]


def _check_range(name: str, value, low: float, high: float) -> None:
    """``value`` must be a number with low < value <= high."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low < value <= high:
        raise ConfigError(f"{name} must be a number above {low:g} and at most {high:g}, got {value!r}",
                          field=name)


def _check_whole(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be a whole number >= {minimum}, got {value!r}", field=name)
