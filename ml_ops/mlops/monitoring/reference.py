"""The reference profile of a model version: what its inputs and outputs looked like when it was validated.

Built from the version's held-out rows (never rows it trained on), it holds per column the
edges of equal-mass bins, the share of reference rows at or below each edge, moments, the
null rate, the observed range and fine quantiles; and the held-out error. Monitoring
compares each window of the inference log against it.

Window features follow the clock (trip counts, mean fares and durations at 3 am are not those at
6 pm), so an hourly window is compared like with like: with the reference rows of its hour of day
(:meth:`ReferenceProfile.slice_for`). Those slices share the pooled bin edges, so one binning of
the log serves every window. An hour with fewer than ``MIN_SLICE_ROWS`` reference rows falls back
to the pooled reference. Daily and weekly windows hold every hour and use the pooled reference.
"""
import dataclasses
import datetime
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from mlops.errors import DataError
from mlops.monitoring.statistics import binned_quantiles, dispersion

# Equal-mass bins of the reference: PSI and the KS statistic are read at their edges.
BINS = 20
# Quantile levels at the middle of 100 equal slices: the Wasserstein distance integrates over them.
QUANTILE_LEVELS = tuple(round((index + 0.5) / 100, 3) for index in range(100))
ARTIFACT_PATH = "monitoring/reference_profile.json"
PREDICTION_COLUMN = "prediction"
HOUR_OF_DAY = "hour_of_day"
# Fewer reference rows than this make a slice noisier than the pooled reference is biased.
MIN_SLICE_ROWS = 100


@dataclass(frozen=True)
class ColumnReference:
    """One column of the reference rows."""

    column_name: str
    count: int
    null_rate: float
    mean: float
    std: float
    min: float
    max: float
    edges: list
    cumulative_share: list
    quantiles: list

    def binned_quantiles(self) -> np.ndarray:
        """Its quantiles at QUANTILE_LEVELS as a window's are read: from the shares at the edges."""
        return binned_quantiles(self.cumulative_share, self.edges, self.min, self.max, QUANTILE_LEVELS)

    def bin_shares(self) -> np.ndarray:
        """The share of reference rows in each bin: (-inf, e0], (e0, e1], ..., (e_last, inf)."""
        cumulative = np.asarray([*self.cumulative_share, 1.0])
        return np.diff(cumulative, prepend=0.0)


@dataclass(frozen=True)
class ReferenceSlice:
    """The reference rows of one season (an hour of day), binned at the pooled edges."""

    rows: int
    columns: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)
    # column (or statistics.QUALITY) -> how much more windows of this kind vary than independent rows
    dispersion: dict = field(default_factory=dict)

    def column(self, name: str) -> ColumnReference:
        return self.columns[name]


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference of one model version."""

    model_name: str
    model_version: str
    rows: int
    created_at: str
    columns: dict = field(default_factory=dict)
    error: dict = field(default_factory=dict)
    # season name -> season value ("0".."23") -> ReferenceSlice
    seasons: dict = field(default_factory=dict)
    # window unit ("hour", "day") -> column -> dispersion (see mlops.monitoring.statistics)
    dispersion: dict = field(default_factory=dict)
    # The version's error model (mlops.monitoring.estimation.ErrorModel.to_dict); empty without one.
    error_model: dict = field(default_factory=dict)

    def column(self, name: str) -> ColumnReference:
        return self.columns[name]

    def slice_for(self, window_unit: str, window_start) -> ReferenceSlice:
        """What a window starting at ``window_start`` is judged against: its hour's slice, else the pool.

        It carries the dispersion of windows of that length; a week takes a day's, the longest the
        reference shows.
        """
        clustering = self.dispersion.get(window_unit) or self.dispersion.get("day", {})
        if window_unit == "hour":
            hourly = self.seasons.get(HOUR_OF_DAY, {}).get(str(window_start.hour))
            if hourly is not None and hourly.rows >= MIN_SLICE_ROWS:
                return dataclasses.replace(hourly, dispersion=clustering)
        return ReferenceSlice(self.rows, self.columns, self.error, clustering)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ReferenceProfile":
        raw = json.loads(text)
        columns = {name: ColumnReference(**column) for name, column in raw.pop("columns").items()}
        seasons = {season: {value: ReferenceSlice(
            piece["rows"], {name: ColumnReference(**column) for name, column in piece["columns"].items()},
            piece["error"], piece.get("dispersion", {})) for value, piece in values.items()}
            for season, values in raw.pop("seasons", {}).items()}
        return cls(columns=columns, seasons=seasons, **raw)

    def baseline_rows(self) -> list[dict]:
        """One row per column, for the ``<predictions table>_baseline`` Delta table."""
        return [{"model_name": self.model_name, "model_version": self.model_version,
                 "model_id": f"models:/{self.model_name}/{self.model_version}", "created_at": self.created_at,
                 "column_name": name, "count": column.count, "null_rate": column.null_rate,
                 "avg": column.mean, "stddev": column.std, "min": column.min, "max": column.max,
                 "bin_edges": list(column.edges), "cumulative_share": list(column.cumulative_share),
                 "quantiles": list(column.quantiles),
                 "reference_rmse": self.error.get("rmse"), "reference_mae": self.error.get("mae")}
                for name, column in sorted(self.columns.items())]


def column_reference(name: str, values, edges=None) -> ColumnReference:
    """The reference of one column, binned at ``edges`` (default: its own equal-mass edges).

    Nulls count towards the null rate only.
    """
    series = pd.to_numeric(pd.Series(values), errors="coerce")
    present = series.dropna().to_numpy(dtype=float)
    if len(present) < 2:
        raise DataError(f"column {name} has {len(present)} non-null reference rows; "
                        "a reference needs at least 2")
    if edges is None:
        edges = np.unique(np.quantile(present, np.arange(1, BINS) / BINS))
    edges = np.asarray(edges, dtype=float)
    ordered = np.sort(present)
    cumulative = np.searchsorted(ordered, edges, side="right") / len(ordered)
    return ColumnReference(column_name=name, count=int(len(series)), null_rate=float(series.isna().mean()),
                           mean=float(present.mean()), std=float(present.std(ddof=1)),
                           min=float(present.min()), max=float(present.max()),
                           edges=[float(edge) for edge in edges],
                           cumulative_share=[float(share) for share in cumulative],
                           quantiles=[float(value) for value in np.quantile(present, QUANTILE_LEVELS)])


def build_reference(model_name: str, model_version: str, rows: pd.DataFrame, feature_columns,
                    predictions, labels, timestamps=None) -> ReferenceProfile:
    """The reference of a version from its held-out ``rows``, its ``predictions`` and the true ``labels``.

    With the rows' event ``timestamps``, it also holds one slice per hour of day.
    """
    predictions = np.asarray(predictions, dtype=float)
    labels = np.asarray(labels, dtype=float)
    if len(rows) != len(predictions) or len(predictions) != len(labels):
        raise DataError(f"the reference needs one prediction and one label per row: {len(rows)} rows, "
                        f"{len(predictions)} predictions, {len(labels)} labels")
    missing = [name for name in feature_columns if name not in rows.columns]
    if missing:
        raise DataError(f"the reference rows lack feature column(s) {', '.join(missing)}")
    values = rows[list(feature_columns)].assign(**{PREDICTION_COLUMN: predictions})
    columns = {name: column_reference(name, values[name]) for name in values.columns}
    profile = ReferenceProfile(model_name=model_name, model_version=str(model_version), rows=len(rows),
                               created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                               columns=columns, error=reference_error(labels, predictions))
    if timestamps is None:
        return profile
    values = values.reset_index(drop=True)
    moments = pd.to_datetime(pd.Series(timestamps).reset_index(drop=True))
    profile = dataclasses.replace(profile, seasons={HOUR_OF_DAY: _slices(
        values, moments.dt.hour.to_numpy(), columns, labels, predictions)})
    squared_errors = (predictions - labels) ** 2
    hours, days = moments.dt.floor("h"), moments.dt.floor("D")
    clustering = {unit: dispersion(values, starts.to_numpy(),
                                   lambda start, unit=unit: profile.slice_for(unit, pd.Timestamp(start)),
                                   squared_errors)
                  for unit, starts in (("hour", hours), ("day", days))}
    return dataclasses.replace(profile, dispersion=clustering)


def _slices(values: pd.DataFrame, seasons: np.ndarray, pooled: dict, labels, predictions) -> dict:
    """One :class:`ReferenceSlice` per season value with enough rows, binned at the pooled edges."""
    slices = {}
    for season in np.unique(seasons):
        chosen = seasons == season
        if chosen.sum() < MIN_SLICE_ROWS:
            continue
        part = values[chosen]
        slices[str(int(season))] = ReferenceSlice(
            int(chosen.sum()), {name: column_reference(name, part[name], pooled[name].edges)
                                for name in values.columns},
            reference_error(labels[chosen], predictions[chosen]))
    return slices


def reference_error(labels: np.ndarray, predictions: np.ndarray) -> dict:
    """The held-out error: rmse, mae, bias, and quantiles of the absolute error."""
    known = np.isfinite(labels) & np.isfinite(predictions)
    errors = predictions[known] - labels[known]
    if len(errors) == 0:
        raise DataError("the reference rows have no labelled, finite predictions to measure the error on")
    absolute = np.abs(errors)
    squared = errors ** 2
    # Var(e^2) / E(e^2)^2: 2 for normal errors, more for heavy tails; the rmse's chance level uses it.
    spread = float(squared.var() / squared.mean() ** 2) if squared.mean() > 0 else 2.0
    return {"rows": int(len(errors)), "rmse": float(math.sqrt(np.mean(squared))),
            "mae": float(absolute.mean()), "bias": float(errors.mean()), "squared_error_spread": spread,
            "absolute_error_quantiles": {str(level): float(np.quantile(absolute, level))
                                         for level in (0.5, 0.9, 0.99)}}
