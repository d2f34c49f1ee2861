"""The hyperparameter search space of the fare model: declared as text, checked once, sampled by a tuner."""
import dataclasses
import math
from dataclasses import dataclass

from taxi_fares.training import TrainingParams

# What a search may vary, and whether it takes whole numbers.
TUNABLE = {"learning_rate": float, "num_leaves": int, "min_data_in_leaf": int, "feature_fraction": float,
           "lambda_l2": float, "num_rounds": int}

DEFAULT_SPACE = ("learning_rate=0.02:0.3:log,num_leaves=8:128:log,min_data_in_leaf=5:200:log,"
                 "feature_fraction=0.5:1.0,lambda_l2=0.001:10:log,num_rounds=50:400")


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: ``low`` to ``high`` inclusive, sampled on a log scale if ``log``."""

    name: str
    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return TUNABLE[self.name] is int

    def suggest(self, trial):
        """This dimension's value for an Optuna-style ``trial``."""
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    dimensions: tuple

    @classmethod
    def parse(cls, text: str) -> "SearchSpace":
        """``name=low:high[:log], ...``; ValueError naming the first bad entry."""
        dimensions, seen = [], set()
        for entry in (part.strip() for part in text.split(",")):
            if not entry:
                continue
            dimension = _dimension(entry)
            if dimension.name in seen:
                raise ValueError(f"'{dimension.name}' is searched twice")
            seen.add(dimension.name)
            dimensions.append(dimension)
        if not dimensions:
            raise ValueError(f"names no hyperparameter; searchable: {', '.join(TUNABLE)}")
        return cls(tuple(dimensions))

    @property
    def names(self) -> tuple:
        return tuple(dimension.name for dimension in self.dimensions)

    def sample(self, trial, base: TrainingParams) -> TrainingParams:
        """``base`` with every searched hyperparameter drawn for ``trial``."""
        return dataclasses.replace(base, **{dimension.name: dimension.suggest(trial)
                                            for dimension in self.dimensions})

    def values_of(self, params: TrainingParams) -> dict:
        """``params``' values of the searched hyperparameters, clipped into the space."""
        values = {}
        for dimension in self.dimensions:
            value = min(max(getattr(params, dimension.name), dimension.low), dimension.high)
            values[dimension.name] = int(value) if dimension.integer else float(value)
        return values


def _dimension(entry: str) -> Dimension:
    name, separator, bounds = (part.strip() for part in entry.partition("="))
    if name not in TUNABLE:
        raise ValueError(f"'{name}' is not a hyperparameter the search can vary; searchable: "
                         f"{', '.join(TUNABLE)}")
    parts = [part.strip() for part in bounds.split(":")]
    scale = parts.pop() if len(parts) == 3 else ""
    if not separator or len(parts) != 2 or scale not in ("", "log"):
        raise ValueError(f"'{entry}' must be written {name}=low:high or {name}=low:high:log")
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"'{entry}': the bounds must be numbers") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"'{entry}': the bounds must be finite")
    if low > high:
        raise ValueError(f"'{name}' has its lower bound {parts[0]} above its upper bound {parts[1]}")
    dimension = Dimension(name, low, high, log=scale == "log")
    if dimension.integer and (low != int(low) or high != int(high)):
        raise ValueError(f"'{name}' takes whole numbers, got {parts[0]}:{parts[1]}")
    if dimension.log and low <= 0:
        raise ValueError(f"'{name}' is searched on a log scale, so its lower bound must be above 0, "
                         f"got {parts[0]}")
    for bound in (low, high):
        try:
            TrainingParams(**{name: int(bound) if dimension.integer else bound}).validate()
        except ValueError as error:
            raise ValueError(f"'{name}' bound {bound:g}: {error}") from None
    return dimension
