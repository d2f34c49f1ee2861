"""The monitor's metric rows: typed once here, with the Spark schemas of their tables derived from them.

The names follow Lakehouse Monitoring's metric tables where the concept is the same
(``window``, ``granularity``, ``model_id``, ``column_name``, ``count``, ``avg``,
``population_stability_index``, ``ks_test``...), and model quality sits on the ``:table``
profile rows, as there.
"""
import dataclasses
import datetime
import enum
import typing
from typing import Optional

from pyspark.sql import types as T

TABLE_COLUMN = ":table"


class Status(str, enum.Enum):
    """How a column's drift, or a window's model quality, was judged."""

    OK = "ok"
    VIOLATION = "violation"
    INSUFFICIENT = "insufficient_data"
    EXEMPT = "exempt"

    def __str__(self):
        return self.value


@dataclasses.dataclass(frozen=True)
class Window:
    start: datetime.datetime
    end: datetime.datetime


@dataclasses.dataclass(frozen=True)
class KsTest:
    statistic: float
    pvalue: float


@dataclasses.dataclass(frozen=True)
class MetricRow:
    """What identifies a metric row: the window, the model version, the column and the comparison arm."""

    window: Window
    granularity: str
    model_id: str
    model_version: str
    column_name: str
    # The inference log's arm (champion, challenger, shadow); None for rows logged without one.
    arm: Optional[str] = None

    @property
    def window_start_text(self) -> str:
        return self.window.start.isoformat()

    @property
    def is_table(self) -> bool:
        return self.column_name == TABLE_COLUMN


@dataclasses.dataclass(frozen=True)
class ProfileRow(MetricRow):
    """A column's profile in one window; on the ``:table`` row, the window's model quality."""

    count: Optional[int] = None
    num_nulls: Optional[int] = None
    labelled_count: Optional[int] = None
    quantiles: Optional[list[float]] = None
    percent_null: Optional[float] = None
    avg: Optional[float] = None
    stddev: Optional[float] = None
    min: Optional[float] = None
    max: Optional[float] = None
    percent_out_of_range: Optional[float] = None
    mean_squared_error: Optional[float] = None
    root_mean_squared_error: Optional[float] = None
    mean_absolute_error: Optional[float] = None
    mean_absolute_percentage_error: Optional[float] = None
    r2_score: Optional[float] = None
    mean_error: Optional[float] = None
    rmse_ratio: Optional[float] = None
    rmse_ratio_by_chance: Optional[float] = None
    quality_status: Optional[Status] = None
    # Before labels: the version's error model over every row of the window (mlops.monitoring.estimation).
    estimated_root_mean_squared_error: Optional[float] = None
    estimated_mean_absolute_error: Optional[float] = None
    estimated_rmse_low: Optional[float] = None
    estimated_rmse_high: Optional[float] = None
    estimated_rmse_ratio_low: Optional[float] = None
    estimated_quality_status: Optional[Status] = None

    @property
    def verdict(self) -> Optional[Status]:
        return self.quality_status


@dataclasses.dataclass(frozen=True)
class DriftRow(MetricRow):
    """A column's drift from the reference in one window."""

    drift_type: str = "BASELINE"
    count: Optional[int] = None
    population_stability_index: Optional[float] = None
    psi_by_chance: Optional[float] = None
    ks_test: Optional[KsTest] = None
    wasserstein_distance: Optional[float] = None
    wasserstein_distance_normalized: Optional[float] = None
    status: Status = Status.INSUFFICIENT

    @property
    def verdict(self) -> Status:
        return self.status


_SPARK_TYPES = {datetime.datetime: T.TimestampType(), str: T.StringType(), int: T.LongType(),
                float: T.DoubleType(), Status: T.StringType(), list[float]: T.ArrayType(T.DoubleType())}
# The tables keep the window's start as a column of its own too: their merge key.
WINDOW_START = "window_start"


def _spark_type(annotation):
    inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(inner) == 1:
        annotation = inner[0]
    if dataclasses.is_dataclass(annotation):
        return spark_schema(annotation)
    return _SPARK_TYPES[annotation]


def spark_schema(row_type) -> T.StructType:
    """The Spark schema of ``row_type``'s fields in order (metric rows: ``window_start`` after ``window``)."""
    hints = typing.get_type_hints(row_type)
    fields = []
    for field in dataclasses.fields(row_type):
        fields.append(T.StructField(field.name, _spark_type(hints[field.name])))
        if field.name == "window" and issubclass(row_type, MetricRow):
            fields.append(T.StructField(WINDOW_START, T.TimestampType()))
    return T.StructType(fields)


def to_record(row: MetricRow) -> dict:
    """A row as the dict Spark writes: statuses as their text, the window's start as its own column."""
    record = {name: value.value if isinstance(value, Status) else value
              for name, value in dataclasses.asdict(row).items()}
    record[WINDOW_START] = row.window.start
    return record


PROFILE_SCHEMA = spark_schema(ProfileRow)
DRIFT_SCHEMA = spark_schema(DriftRow)
