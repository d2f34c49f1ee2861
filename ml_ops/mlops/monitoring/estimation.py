"""Model quality before labels arrive: Direct Loss Estimation (DLE), as NannyML does it for regression.

An error model, fitted on a version's held-out rows, predicts each row's absolute and squared
error from its features and its prediction: two small LightGBM models. Over a window, the mean
predicted squared error estimates the squared rmse, and the mean predicted absolute error the
mae, with no label. Fitting is cross-fitted: each held-out row is estimated by the models of
the other folds, and those honest estimates are held against the realized error on slices of
the held-out rows. That calibration gives the interval of a window's estimate.

What it cannot see is concept drift: fares that change for the same inputs. The inputs look as
before, so the estimate stays where the reference put it.
"""
import dataclasses
import functools
import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mlops.errors import DataError

logger = logging.getLogger(__name__)

FOLDS = 5
CALIBRATION_SLICES = 20
# Small and regularised: the error is a noisy target, and the model is applied to every logged row.
ROUNDS = 80
PARAMS = {"objective": "regression", "num_leaves": 15, "learning_rate": 0.08, "min_data_in_leaf": 40,
          "feature_fraction": 0.9, "lambda_l2": 1.0, "verbose": -1, "num_threads": 1, "seed": 7,
          "deterministic": True}
ARTIFACT_PATH = "monitoring/error_model.json"
# Fewer held-out rows than this leave too few per fold and slice to fit and calibrate.
MIN_ROWS = 500


@dataclass(frozen=True)
class ErrorModel:
    """The two boosters as LightGBM text, the inputs they read, and their calibration."""

    feature_names: list
    absolute: str
    squared: str
    rows: int
    calibration: dict = field(default_factory=dict)

    def predict(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(absolute, squared) error estimated for each row of ``matrix`` (columns: ``feature_names``)."""
        absolute, squared = (_booster(text).predict(matrix, num_threads=1)
                             for text in (self.absolute, self.squared))
        return np.maximum(absolute, 0.0), np.maximum(squared, 0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "ErrorModel":
        return cls(**raw)


# A Python worker predicts batch after batch with the same model: it is parsed once, not per batch.
@functools.lru_cache(maxsize=4)
def _booster(text: str):
    import lightgbm

    return lightgbm.Booster(model_str=text)


def _fit(matrix: np.ndarray, target: np.ndarray, names: list):
    import lightgbm

    return lightgbm.train(PARAMS, lightgbm.Dataset(matrix, target, feature_name=names, free_raw_data=True),
                          num_boost_round=ROUNDS)


def fit_error_model(inputs: pd.DataFrame, predictions, labels, seed: int = 0) -> ErrorModel:
    """The error model of a version: its held-out ``inputs`` (features), ``predictions`` and ``labels``."""
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    names = [*inputs.columns, "prediction"]
    matrix = np.column_stack([inputs.to_numpy(dtype=float), predictions])
    known = np.isfinite(labels) & np.isfinite(predictions)
    if known.sum() < MIN_ROWS:
        raise DataError(f"an error model needs at least {MIN_ROWS} labelled held-out rows, "
                        f"got {int(known.sum())}")
    matrix, errors = matrix[known], (predictions - labels)[known]
    targets = {"absolute": np.abs(errors), "squared": errors * errors}
    folds = np.random.default_rng(seed).permutation(len(errors)) % FOLDS
    honest = {kind: np.empty(len(errors)) for kind in targets}
    for fold in range(FOLDS):
        fitted, held = folds != fold, folds == fold
        for kind, target in targets.items():
            model = _fit(matrix[fitted], target[fitted], names)
            honest[kind][held] = np.maximum(model.predict(matrix[held]), 0.0)
    boosters = {kind: _fit(matrix, target, names).model_to_string() for kind, target in targets.items()}
    calibration = calibrate(honest["squared"], targets["squared"], seed)
    calibration["mean_absolute_error"] = float(targets["absolute"].mean())
    calibration["estimated_mean_absolute_error"] = float(honest["absolute"].mean())
    return ErrorModel(names, boosters["absolute"], boosters["squared"], int(len(errors)), calibration)


def calibrate(estimated_squared: np.ndarray, squared: np.ndarray, seed: int = 0) -> dict:
    """Estimated against realized rmse on random slices of the held-out rows, and the bias beyond chance.

    On a slice of ``m`` rows the log of the ratio varies by chance about ``spread / (4 m)`` (the
    delta method on the mean squared error); what it varies beyond that is the error model's own.
    ``estimate_spread`` is the same measure for the estimated squared errors, which vary far less.
    """
    order = np.random.default_rng(seed + 1).permutation(len(squared))
    slices = np.array_split(order, CALIBRATION_SLICES)
    estimated = np.array([math.sqrt(estimated_squared[part].mean()) for part in slices])
    realized = np.array([math.sqrt(squared[part].mean()) for part in slices])
    log_ratios = np.log(estimated / realized)
    spread = float(squared.var() / squared.mean() ** 2) if squared.mean() > 0 else 2.0
    slice_rows = len(squared) / CALIBRATION_SLICES
    beyond_chance = max(0.0, float(log_ratios.var(ddof=1)) - spread / (4 * slice_rows))
    return {"slice_rows": int(slice_rows), "estimated_rmse": estimated.tolist(),
            "realized_rmse": realized.tolist(),
            "mean_absolute_relative_error": float(np.mean(np.abs(estimated / realized - 1))),
            "log_ratio_mean": float(log_ratios.mean()),
            "bias_variance": beyond_chance + float(log_ratios.mean()) ** 2, "squared_error_spread": spread,
            "estimate_spread": float(estimated_squared.var() / estimated_squared.mean() ** 2)}


def rmse_interval(calibration: dict, estimated_rmse: float, rows: int, z: float) -> tuple[float, float]:
    """The interval of the model's expected rmse on a window's inputs, on a log scale.

    Its width is the error model's own bias, from the calibration, and the chance in the mean
    of ``rows`` estimated squared errors. The realized rmse of one window varies more: heavy-tailed
    errors make it noisy, which is what the estimate, needing no label, is spared.
    """
    relative = math.sqrt(calibration["bias_variance"] + calibration["estimate_spread"] / (4 * rows))
    return estimated_rmse * math.exp(-z * relative), estimated_rmse * math.exp(z * relative)


def with_error_model(reference, rows: pd.DataFrame, feature_columns, predictions, labels):
    """``reference`` carrying the error model of its rows; as it was when they are too few to fit one."""
    try:
        model = fit_error_model(rows[list(feature_columns)], predictions, labels)
    except DataError as error:
        logger.warning("model %s version %s has no error model, so no estimated quality: %s",
                       reference.model_name, reference.model_version, error)
        return reference
    logger.info("error model of version %s: estimated rmse within %.1f%% of the realized on held-out slices "
                "of %d rows", reference.model_version,
                100 * model.calibration["mean_absolute_relative_error"], model.calibration["slice_rows"])
    return dataclasses.replace(reference, error_model=model.to_dict())
