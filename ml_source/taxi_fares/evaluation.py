"""Regression metrics, baselines, slices and the fare heuristic a model must beat."""
import logging
from dataclasses import dataclass

import lightgbm
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

# (name, lower bound inclusive, upper bound exclusive) in miles.
DISTANCE_SLICES = (
    ("distance_0_2", -np.inf, 2.0),
    ("distance_2_5", 2.0, 5.0),
    ("distance_5_10", 5.0, 10.0),
    ("distance_10_plus", 10.0, np.inf),
)
SLICE_COLUMNS = ("is_weekend", "trip_distance", "fare_amount", "prediction")
HEURISTIC_COLUMNS = ("trip_distance", "trip_duration_minutes")


def _as_finite_array(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(array)).sum())} missing or infinite values")
    return array


def _paired(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    truth = _as_finite_array(y_true, "y_true")
    predicted = _as_finite_array(y_pred, "y_pred")
    if len(truth) != len(predicted):
        raise ValueError(f"y_true has {len(truth)} values but y_pred has {len(predicted)}")
    if len(truth) == 0:
        raise ValueError("cannot compute metrics on zero rows")
    return truth, predicted


def rmse(y_true, y_pred) -> float:
    truth, predicted = _paired(y_true, y_pred)
    return float(np.sqrt(np.mean((truth - predicted) ** 2)))


def regression_metrics(y_true, y_pred) -> dict:
    """rmse, mae and r2. r2 is 1.0 for a perfect fit of constant labels and 0.0 otherwise, not NaN."""
    truth, predicted = _paired(y_true, y_pred)
    residuals = truth - predicted
    residual_sum = float(np.sum(residuals ** 2))
    total_sum = float(np.sum((truth - truth.mean()) ** 2))
    if total_sum > 0:
        r2 = 1.0 - residual_sum / total_sum
    else:
        r2 = 1.0 if residual_sum == 0 else 0.0
    return {
        "rmse": float(np.sqrt(residual_sum / len(truth))),
        "mae": float(np.mean(np.abs(residuals))),
        "r2": float(r2),
    }


def mean_baseline_rmse(train_labels, test_labels) -> float:
    """The rmse on test labels of always predicting the mean training fare."""
    train = _as_finite_array(train_labels, "train_labels")
    if len(train) == 0:
        raise ValueError("train_labels is empty")
    test = _as_finite_array(test_labels, "test_labels")
    return rmse(test, np.full(len(test), train.mean()))


def feature_importance(booster: lightgbm.Booster) -> pd.Series:
    """Total gain per feature, largest first."""
    gains = booster.feature_importance(importance_type="gain")
    series = pd.Series(gains, index=booster.feature_name(), name="gain", dtype=float)
    return series.sort_values(ascending=False, kind="stable")


def _require_columns(frame: pd.DataFrame, columns, purpose: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns))
        raise ValueError(f"{purpose} needs columns {', '.join(missing)}; found {found}")


def slice_metrics(frame: pd.DataFrame) -> dict:
    """rmse and row count per weekday/weekend and distance band; empty slices are left out."""
    _require_columns(frame, SLICE_COLUMNS, "slice_metrics")
    masks = {"weekday": frame["is_weekend"] == 0, "weekend": frame["is_weekend"] == 1}
    for name, low, high in DISTANCE_SLICES:
        masks[name] = (frame["trip_distance"] >= low) & (frame["trip_distance"] < high)
    result = {}
    for name, mask in masks.items():
        rows = frame[mask.to_numpy()]
        if len(rows):
            result[name] = {"rmse": rmse(rows["fare_amount"], rows["prediction"]), "rows": int(len(rows))}
    return result


@dataclass
class FareHeuristic:
    """fare = base + per_mile * distance + per_minute * duration: the rule a first model must beat."""

    base: float
    per_mile: float
    per_minute: float

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        _require_columns(frame, HEURISTIC_COLUMNS, "FareHeuristic.predict")
        return (self.base + self.per_mile * frame["trip_distance"].to_numpy(dtype=float)
                + self.per_minute * frame["trip_duration_minutes"].to_numpy(dtype=float))


def fit_fare_heuristic(frame: pd.DataFrame) -> FareHeuristic:
    """Least-squares fit of the heuristic's three coefficients."""
    _require_columns(frame, HEURISTIC_COLUMNS + ("fare_amount",), "fit_fare_heuristic")
    distance = _as_finite_array(frame["trip_distance"], "trip_distance")
    duration = _as_finite_array(frame["trip_duration_minutes"], "trip_duration_minutes")
    fare = _as_finite_array(frame["fare_amount"], "fare_amount")
    if len(fare) < 3:
        raise ValueError(f"fit_fare_heuristic needs at least 3 rows, got {len(fare)}")
    design = np.column_stack([np.ones(len(fare)), distance, duration])
    (base, per_mile, per_minute), *_ = np.linalg.lstsq(design, fare, rcond=None)
    heuristic = FareHeuristic(float(base), float(per_mile), float(per_minute))
    logger.info("fitted fare heuristic: %s", heuristic)
    return heuristic
