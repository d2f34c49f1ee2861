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
    objective: str = "regression"
    metric: str = "rmse"
    num_rounds: int = 100
    learning_rate: float = 0.1
    seed: int = 0

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
        if isinstance(self.learning_rate, bool) or not isinstance(self.learning_rate, numbers.Real) \
                or not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"{label('learning_rate')} must be a positive number, "
                             f"got {self.learning_rate!r}")
        if not _is_integer(self.seed) or self.seed < 0:
            raise ValueError(f"{label('seed')} must be a non-negative integer, got {self.seed!r}")

    def lightgbm_params(self, num_threads: int = 0) -> dict:
        """The LightGBM parameter dict; training rounds are passed separately."""
        return {
            "objective": self.objective,
            "metric": self.metric,
            "num_leaves": int(self.num_leaves),
            "learning_rate": float(self.learning_rate),
            "seed": int(self.seed),
            # Same data, seed and threads give the same booster.
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": int(num_threads),
            "verbosity": -1,
        }


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def train_model(features: pd.DataFrame, labels: pd.Series, params: TrainingParams,
                num_threads: int = 0) -> "lightgbm.Booster":
    """A LightGBM booster trained with exactly ``params``; num_threads 0 lets LightGBM choose."""
    params.validate()
    if not _is_integer(num_threads) or num_threads < 0:
        raise ValueError(f"num_threads must be a non-negative integer, got {num_threads!r}")
    if len(features) == 0:
        raise ValueError("cannot train on an empty feature frame")
    if len(features) != len(labels):
        raise ValueError(f"features have {len(features)} rows but labels have {len(labels)}")
    label_values = np.asarray(labels, dtype=float)
    if not np.isfinite(label_values).all():
        bad = int((~np.isfinite(label_values)).sum())
        raise ValueError(f"labels contain {bad} missing or infinite values")
    logger.info("training LightGBM on %d rows, %d features: %s, %d rounds",
                len(features), features.shape[1], asdict(params), params.num_rounds)
    import lightgbm  # here, not at import: config parsing needs TrainingParams only

    dataset = lightgbm.Dataset(features, label=label_values, free_raw_data=True)
    return lightgbm.train(params.lightgbm_params(num_threads), dataset,
                          num_boost_round=int(params.num_rounds))


def predict(booster: "lightgbm.Booster", features: pd.DataFrame) -> np.ndarray:
    """Predictions for ``features``, whose columns are matched to the booster's by name."""
    names = booster.feature_name()
    missing = [name for name in names if name not in features.columns]
    if missing:
        raise ValueError(f"features lack columns the model was trained on: {', '.join(missing)}")
    return np.asarray(booster.predict(features[names]), dtype=float)
