"""LightGBM training with parameters that are validated once and then used as given."""
import logging
import math
import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import lightgbm

logger = logging.getLogger(__name__)

REGRESSION_OBJECTIVES = (
    "regression", "regression_l2", "l2", "mse", "regression_l1", "l1", "mae", "huber", "fair",
    "poisson", "quantile", "mape", "gamma", "tweedie",
)
REGRESSION_METRICS = (
    "rmse", "l2", "mse", "mae", "l1", "huber", "fair", "poisson", "quantile", "mape", "gamma",
    "gamma_deviance", "tweedie",
)


@dataclass(frozen=True)
class TrainingParams:
    """LightGBM hyperparameters for the fare regressor."""

    num_leaves: int = 32
    num_rounds: int = 100
    learning_rate: float = 0.1

    # What LightGBM minimises and reports, and the seed of its sampling.
    objective: str = "regression"
    metric: str = "rmse"
    seed: int = 0

    # LightGBM's own defaults: tuning searches them, the job parameters leave them be.
    min_data_in_leaf: int = 20
    feature_fraction: float = 1.0
    lambda_l2: float = 0.0

    def validate(self, label=lambda field: field) -> None:
        """ValueError for the first bad value; ``label(field)`` names the field in the message."""
        if not _is_integer(self.num_leaves) or self.num_leaves < 2:
            raise ValueError(f"{label('num_leaves')} must be an integer >= 2, got {self.num_leaves!r}")
        if not _is_integer(self.num_rounds) or self.num_rounds < 1:
            raise ValueError(f"{label('num_rounds')} must be an integer >= 1, got {self.num_rounds!r}")
        if self.objective not in REGRESSION_OBJECTIVES:
            raise ValueError(f"{label('objective')} must be one of {', '.join(REGRESSION_OBJECTIVES)}; "
                             f"got {self.objective!r}")
        if self.metric not in REGRESSION_METRICS:
            raise ValueError(f"{label('metric')} must be one of {', '.join(REGRESSION_METRICS)}; "
                             f"got {self.metric!r}")
        if not _is_real(self.learning_rate) or self.learning_rate <= 0:
            raise ValueError(f"{label('learning_rate')} must be a positive number, "
                             f"got {self.learning_rate!r}")
        if not _is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"{label('seed')} must be a non-negative integer, got {self.seed!r}")
        if not _is_integer(self.min_data_in_leaf) or self.min_data_in_leaf < 1:
            raise ValueError(f"{label('min_data_in_leaf')} must be an integer >= 1, "
                             f"got {self.min_data_in_leaf!r}")
        if not _is_real(self.feature_fraction) or not 0 < self.feature_fraction <= 1:
            raise ValueError(f"{label('feature_fraction')} must be a number in (0, 1], "
                             f"got {self.feature_fraction!r}")
        if not _is_real(self.lambda_l2) or self.lambda_l2 < 0:
            raise ValueError(f"{label('lambda_l2')} must be a non-negative number, got {self.lambda_l2!r}")

    def lightgbm_params(self, num_threads: int = 0) -> dict:
        """The LightGBM parameter dict; training rounds are passed separately."""
        return {
            "objective": self.objective,
            "metric": self.metric,
            "num_leaves": int(self.num_leaves),
            "learning_rate": float(self.learning_rate),
            "seed": int(self.seed),
            "min_data_in_leaf": int(self.min_data_in_leaf),
            "feature_fraction": float(self.feature_fraction),
            "lambda_l2": float(self.lambda_l2),
            # Same data, seed and threads give the same booster.
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": int(num_threads),
            "verbosity": -1,
        }


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _checked_labels(features: pd.DataFrame, labels) -> np.ndarray:
    if len(features) == 0:
        raise ValueError("cannot train on an empty feature frame")
    if len(features) != len(labels):
        raise ValueError(f"features have {len(features)} rows but labels have {len(labels)}")
    label_values = np.asarray(labels, dtype=float)
    if not np.isfinite(label_values).all():
        bad = int((~np.isfinite(label_values)).sum())
        raise ValueError(f"labels contain {bad} missing or infinite values")
    return label_values


def _checked_threads(num_threads) -> int:
    if not _is_integer(num_threads) or num_threads < 0:
        raise ValueError(f"num_threads must be a non-negative integer, got {num_threads!r}")
    return num_threads


def train_model(features: pd.DataFrame, labels: pd.Series, params: TrainingParams,
                num_threads: int = 0) -> "lightgbm.Booster":
    """A LightGBM booster trained with exactly ``params``; num_threads 0 lets LightGBM choose."""
    params.validate()
    _checked_threads(num_threads)
    label_values = _checked_labels(features, labels)
    logger.info("training LightGBM on %d rows, %d features: %s, %d rounds",
                len(features), features.shape[1], asdict(params), params.num_rounds)
    import lightgbm  # here, not at import: config parsing needs TrainingParams only

    dataset = lightgbm.Dataset(features, label=label_values, free_raw_data=True)
    return lightgbm.train(params.lightgbm_params(num_threads), dataset,
                          num_boost_round=int(params.num_rounds))


def validation_rmse(train: tuple, valid: tuple, params: TrainingParams, num_threads: int = 0,
                    early_stopping_rounds: int = 20, after_round=None) -> tuple[float, int]:
    """(best validation rmse, its round) of ``params`` trained on ``train`` with early stopping.

    ``train`` and ``valid`` are (features, labels). ``after_round(round, rmse)`` is called after
    each round; it may raise to stop the training (a tuner prunes a trial this way).
    """
    params.validate()
    _checked_threads(num_threads)
    import lightgbm

    train_set = lightgbm.Dataset(train[0], label=_checked_labels(*train), free_raw_data=True)
    valid_set = lightgbm.Dataset(valid[0], label=_checked_labels(*valid), reference=train_set)
    callbacks = [lightgbm.early_stopping(early_stopping_rounds, first_metric_only=True, verbose=False)]
    if after_round is not None:
        callbacks.append(lambda env: after_round(env.iteration + 1, env.evaluation_result_list[0][2]))
    booster = lightgbm.train({**params.lightgbm_params(num_threads), "metric": "rmse"}, train_set,
                             num_boost_round=int(params.num_rounds), valid_sets=[valid_set],
                             valid_names=["validation"], callbacks=callbacks)
    return float(booster.best_score["validation"]["rmse"]), int(booster.best_iteration or params.num_rounds)


def predict(booster: "lightgbm.Booster", features: pd.DataFrame) -> np.ndarray:
    """Predictions for ``features``, whose columns are matched to the booster's by name."""
    names = booster.feature_name()
    missing = [name for name in names if name not in features.columns]
    if missing:
        raise ValueError(f"features lack columns the model was trained on: {', '.join(missing)}")
    return np.asarray(booster.predict(features[names]), dtype=float)
