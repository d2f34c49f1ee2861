"""Requests in the MLflow scoring protocol, turned into feature rows; bad input named field by field.

A body is a JSON object with exactly one of ``dataframe_split`` (``columns`` and ``data``),
``dataframe_records``, ``instances`` or ``inputs`` (records, or columns of equal length). Each
record is either a **full feature row** (every model feature) or a **raw trip**: the raw
schema's fields without the fare (``tpep_pickup_datetime``, ``pickup_zip``, ``dropoff_zip``,
``trip_distance``) and either ``tpep_dropoff_datetime`` or an expected
``trip_duration_minutes``. A raw trip's features are computed by the batch path's own
definition (:func:`taxi_fares.features.trip_feature_values`), and its zip window features are
looked up in the online store.

A full feature row is checked against the inference log's columns before it is scored: whole
numbers where the log keeps integers, each value in its feature's range, and null only where the
log allows it (a window feature with no trips in its window, say). A body may also be CSV
(``Content-Type: text/csv``): a header of field names, then one record per line.
"""
import csv
import datetime
import io
import json
import math
from dataclasses import dataclass, field

from taxi_fares import features

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
RAW_FIELDS = ("tpep_pickup_datetime", "pickup_zip", "dropoff_zip", "trip_distance")
MAX_DISTANCE_MILES = 500.0
MAX_DURATION_MINUTES = 24 * 60.0
# Pickups outside these years are not trips this service can have seen (and would overflow dates).
EARLIEST_PICKUP, LATEST_PICKUP = datetime.datetime(1970, 1, 1), datetime.datetime(2100, 1, 1)
CSV_TYPES = ("text/csv", "application/csv")
MAX_COUNT = 2 ** 31 - 1


@dataclass(frozen=True)
class FeatureRule:
    """What the inference log accepts for one feature of a full feature row."""

    low: float
    high: float
    whole: bool = False
    nullable: bool = False


FEATURE_RULES = {
    "trip_distance": FeatureRule(0.0, MAX_DISTANCE_MILES),
    "trip_duration_minutes": FeatureRule(0.0, MAX_DURATION_MINUTES),
    "pickup_hour": FeatureRule(0, 23, whole=True),
    "pickup_day_of_week": FeatureRule(1, 7, whole=True),
    "is_weekend": FeatureRule(0, 1, whole=True),
    "pickup_zip": FeatureRule(0, 99999, whole=True),
    "dropoff_zip": FeatureRule(0, 99999, whole=True),
    # No trip in the zip's window: no mean fare.
    features.MEAN_FARE_1H_PICKUP_ZIP: FeatureRule(0.0, 1e6, nullable=True),
    features.COUNT_1H_PICKUP_ZIP: FeatureRule(0, MAX_COUNT, whole=True),
    features.COUNT_30M_DROPOFF_ZIP: FeatureRule(0, MAX_COUNT, whole=True),
}
# A feature the rules do not know (a model trained on other columns) takes any finite number, or null.
ANY_NUMBER = FeatureRule(-1e12, 1e12, nullable=True)


class RequestError(ValueError):
    """A request the server answers with ``status`` and this message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Row:
    """One record ready to score: its features in the model's order, and how they were obtained."""

    features: dict
    pickup: datetime.datetime | None = None
    looked_up: dict = field(default_factory=dict)
    fell_back: list = field(default_factory=list)


def records_of(body: bytes, content_type: str = "application/json") -> list[dict]:
    """The records of a request body; RequestError naming what is wrong."""
    media_type = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media_type in CSV_TYPES:
        return _csv_records(body)
    if media_type not in ("application/json", "*/*", ""):
        raise RequestError(f"Content-Type {media_type} is not supported; send application/json "
                           "(or text/csv)", status=415)
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError) as error:
        # ValueError covers malformed JSON and integers longer than Python converts.
        raise RequestError(f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise RequestError("the body is not valid JSON: it nests too deeply") from None
    if not isinstance(payload, dict):
        raise RequestError(f"the body must be a JSON object with one of {', '.join(FORMATS)}")
    given = [name for name in FORMATS if name in payload]
    if len(given) != 1:
        raise RequestError(f"the body must have exactly one of {', '.join(FORMATS)}; it has "
                           f"{', '.join(given) or 'none'}")
    name, value = given[0], payload[given[0]]
    if name == "dataframe_split":
        return _split_records(value)
    if isinstance(value, dict):
        return _column_records(name, value)
    if not isinstance(value, list) or not all(isinstance(record, dict) for record in value):
        raise RequestError(f"'{name}' must be a list of objects (one per row)")
    if not value:
        raise RequestError(f"'{name}' has no rows")
    return value


def _split_records(value) -> list[dict]:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list) \
            or not isinstance(value.get("data"), list):
        raise RequestError("'dataframe_split' must have a 'columns' list and a 'data' list of rows")
    columns = value["columns"]
    records = []
    for index, row in enumerate(value["data"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(f"'dataframe_split.data[{index}]' must be a list of {len(columns)} values")
        records.append(dict(zip(columns, row)))
    if not records:
        raise RequestError("'dataframe_split.data' has no rows")
    return records


def _csv_value(text: str):
    """A CSV cell as JSON would carry it: a number, null for an empty cell, else the text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _csv_records(body: bytes) -> list[dict]:
    try:
        reader = csv.DictReader(io.StringIO(body.decode("utf-8")))
        records = [{name: _csv_value(value) for name, value in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error, ValueError) as error:
        raise RequestError(f"the body is not valid CSV: {error}") from None
    if not reader.fieldnames or not records:
        raise RequestError("the CSV body needs a header line of field names and at least one row")
    if any(None in record for record in records):
        raise RequestError("the CSV body has a row with more cells than the header has names")
    return records


def _column_records(name: str, columns: dict) -> list[dict]:
    lengths = {len(values) if isinstance(values, list) else -1 for values in columns.values()}
    if len(lengths) != 1 or -1 in lengths or 0 in lengths:
        raise RequestError(f"'{name}' given as columns must map each name to a non-empty list, all of "
                           "one length")
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _number(record: dict, name: str, index: int, low: float, high: float) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"row {index}: '{name}' must be a number, got {json.dumps(value)}")
    if not math.isfinite(value) or not low <= value <= high:
        raise RequestError(f"row {index}: '{name}' must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _feature(record: dict, name: str, index: int) -> float:
    """A full feature row's value of ``name``, checked as the inference log will store it."""
    rule = FEATURE_RULES.get(name, ANY_NUMBER)
    value = record.get(name)
    if value is None:
        if rule.nullable:
            return math.nan
        raise RequestError(f"row {index}: '{name}' must not be null")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"row {index}: '{name}' must be a number, got {json.dumps(value)}")
    if not math.isfinite(value) or not rule.low <= value <= rule.high:
        raise RequestError(f"row {index}: '{name}' must be between {rule.low:g} and {rule.high:g}, "
                           f"got {value}")
    if rule.whole and not float(value).is_integer():
        raise RequestError(f"row {index}: '{name}' must be a whole number, got {value}")
    return float(value)


def _zip_code(record: dict, name: str, index: int) -> int:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float)
                                                                      and value.is_integer()):
        raise RequestError(f"row {index}: '{name}' must be a whole number (a zip code), "
                           f"got {json.dumps(value)}")
    if not 0 <= value <= 99999:
        raise RequestError(f"row {index}: '{name}' must be a zip code between 0 and 99999, got {value}")
    return int(value)


def _moment(record: dict, name: str, index: int) -> datetime.datetime:
    value = record.get(name)
    try:
        moment = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise RequestError(f"row {index}: '{name}' must be an ISO 8601 date-time such as "
                           f"2016-02-01T08:30:00, got {json.dumps(value)}") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    if not EARLIEST_PICKUP <= moment < LATEST_PICKUP:
        raise RequestError(f"row {index}: '{name}' must be between {EARLIEST_PICKUP:%Y-%m-%d} and "
                           f"{LATEST_PICKUP:%Y-%m-%d}, got {value}")
    return moment


def feature_row(record: dict, index: int, feature_names, store) -> Row:
    """The record's feature row: as given when complete, else computed from a raw trip."""
    if not isinstance(record, dict):
        raise RequestError(f"row {index} must be an object")
    if all(name in record for name in feature_names):
        return Row({name: _feature(record, name, index) for name in feature_names})
    missing = [name for name in RAW_FIELDS if name not in record]
    if missing:
        raise RequestError(f"row {index}: missing field(s) {', '.join(missing)}; send a raw trip "
                           f"({', '.join(RAW_FIELDS)}, and tpep_dropoff_datetime or trip_duration_minutes) "
                           f"or every model feature ({', '.join(feature_names)})")
    pickup = _moment(record, "tpep_pickup_datetime", index)
    if "tpep_dropoff_datetime" in record:
        dropoff = _moment(record, "tpep_dropoff_datetime", index)
        if dropoff <= pickup:
            raise RequestError(f"row {index}: 'tpep_dropoff_datetime' must be after 'tpep_pickup_datetime'")
        if dropoff - pickup > datetime.timedelta(minutes=MAX_DURATION_MINUTES):
            raise RequestError(f"row {index}: 'tpep_dropoff_datetime' must be at most "
                               f"{MAX_DURATION_MINUTES / 60:g} hours after 'tpep_pickup_datetime'")
    elif "trip_duration_minutes" in record:
        minutes = _number(record, "trip_duration_minutes", index, 1e-3, MAX_DURATION_MINUTES)
        dropoff = pickup + datetime.timedelta(minutes=minutes)
    else:
        raise RequestError(f"row {index}: send 'tpep_dropoff_datetime' or 'trip_duration_minutes'")
    values = {"trip_distance": _number(record, "trip_distance", index, 1e-6, MAX_DISTANCE_MILES),
              "pickup_zip": _zip_code(record, "pickup_zip", index),
              "dropoff_zip": _zip_code(record, "dropoff_zip", index),
              **features.trip_feature_values(features.TripOps, pickup, dropoff)}
    lookup = store.lookup(values["pickup_zip"], values["dropoff_zip"], pickup)
    values.update(lookup.values)
    row = {name: (math.nan if values[name] is None else float(values[name])) for name in feature_names}
    return Row(row, pickup, lookup.values, lookup.fell_back)
