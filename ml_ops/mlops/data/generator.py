"""Synthetic raw trips with the public dataset's schema (``mlops data generate``)."""
import datetime
import logging
import shutil
import uuid
from pathlib import Path

from mlops import platform
from mlops.errors import ConfigError

logger = logging.getLogger(__name__)


def parse_date(text):
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"dates must be YYYY-MM-DD, got {text!r}") from None


def generate(spark, rows, start_date, end_date, output, seed=0, output_format="parquet",
             drift=None, partitions=None, append=False, labels=None):
    """Generate ``rows`` trips in Spark and write (or ``append``) them to ``output``; returns the path.

    With ``labels`` (a TableStore and a table name), the trips' fares are also written there by
    request id, as late labels arrive (``request_id``, ``fare_amount``), for the ``merge_labels`` task.
    """
    from taxi_fares.data import generate_trips

    if start_date > end_date:
        raise ConfigError(f"--start-date {start_date} is after --end-date {end_date}")
    try:
        trips = generate_trips(spark, rows, start_date, end_date, seed=seed, drift=drift)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if partitions:
        trips = trips.repartition(partitions)
    target = platform.driver_path(output)
    writer = trips.write.mode("append" if append else "overwrite")
    if output_format == "csv":
        writer.option("header", "true").csv(str(target))
    else:
        writer.parquet(str(target))
    if labels is not None:
        write_labels(trips, *labels, append=append)
    return target


def write_labels(trips, tables, name: str, append: bool = False) -> None:
    """The trips' fares by the request id scoring gives them: the late labels of those trips."""
    from taxi_fares.features import LABEL_COLUMN
    from taxi_fares.schema import with_trip_id

    from mlops.inference import engine

    fares = with_trip_id(trips).select(engine.request_id_column().alias(engine.REQUEST_ID), LABEL_COLUMN)
    if append and tables.exists(name):
        # New trips have new request ids: the labels so far, plus theirs.
        fares = tables.read(name).unionByName(fares).localCheckpoint()
    tables.write(fares.dropDuplicates([engine.REQUEST_ID]), name)
    logger.info("late labels of the generated trips written to %s", tables.uri(name))


def land_file(trips, folder) -> Path:
    """Write ``trips`` as one new Parquet file in ``folder``, renamed into place when complete.

    A stream reading ``folder`` never sees half a file, as with a landing process that uploads,
    then renames.
    """
    folder = platform.driver_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}-staging-{uuid.uuid4().hex[:8]}"
    try:
        trips.coalesce(1).write.parquet(str(staging))
        landed = folder / f"trips-{uuid.uuid4().hex[:12]}.parquet"
        next(staging.glob("part-*.parquet")).rename(landed)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return landed
