"""Synthetic raw trips with the public dataset's schema (``mlops data generate``)."""
import datetime
import logging

from mlops import platform
from mlops.errors import ConfigError

logger = logging.getLogger(__name__)


def parse_date(text):
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"dates must be YYYY-MM-DD, got {text!r}") from None


def generate(spark, rows, start_date, end_date, output, seed=0, output_format="parquet",
             drift=None, partitions=None, append=False):
    """Generate ``rows`` trips in Spark and write (or ``append``) them to ``output``; returns the path."""
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
    return target
