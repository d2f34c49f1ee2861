"""``mlops data generate``: synthetic raw trips with the public dataset's schema."""
import datetime
import logging
import time

from mlops.errors import ConfigError

logger = logging.getLogger(__name__)


def _date(text):
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"dates must be YYYY-MM-DD, got {text!r}") from None


def generate(spark, rows, start_date, end_date, output, seed=0, output_format="parquet",
             drift=None, partitions=None):
    """Generate ``rows`` trips in Spark and write them to ``output``; returns the local path."""
    from taxi_fares.data import generate_trips

    from mlops.tables import to_local_path

    if start_date > end_date:
        raise ConfigError(f"--start-date {start_date} is after --end-date {end_date}")
    try:
        trips = generate_trips(spark, rows, start_date, end_date, seed=seed, drift=drift)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if partitions:
        trips = trips.repartition(partitions)
    target = to_local_path(output)
    writer = trips.write.mode("overwrite")
    if output_format == "csv":
        writer.option("header", "true").csv(str(target))
    else:
        writer.parquet(str(target))
    return target


def _run(args):
    from taxi_fares.data import DriftSettings

    from mlops.local.session import spark_session

    drift = DriftSettings(distance_scale=args.distance_scale, fare_scale=args.fare_scale,
                          hour_shift=args.hour_shift, zip_shift=args.zip_shift)
    try:
        drift.validate()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    started = time.monotonic()
    target = generate(spark_session(), args.rows, _date(args.start_date), _date(args.end_date),
                      args.output, seed=args.seed, output_format=args.format, drift=drift)
    print(f"wrote {args.rows} trips ({args.start_date}..{args.end_date}, seed {args.seed}) "
          f"to {target} in {time.monotonic() - started:.1f}s")
    return 0


def register_cli(subparsers):
    data = subparsers.add_parser("data", help="generate synthetic raw trips")
    commands = data.add_subparsers(dest="data_command", required=True)
    gen = commands.add_parser("generate", help="write raw trips with the public dataset's schema")
    gen.add_argument("--rows", type=int, required=True)
    gen.add_argument("--start-date", required=True)
    gen.add_argument("--end-date", required=True)
    gen.add_argument("--output", required=True, help="a local path or dbfs:/ path")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    drift = gen.add_argument_group("drift", "shift distributions to simulate drift")
    drift.add_argument("--distance-scale", type=float, default=1.0)
    drift.add_argument("--fare-scale", type=float, default=1.0)
    drift.add_argument("--hour-shift", type=int, default=0)
    drift.add_argument("--zip-shift", type=int, default=0)
    gen.set_defaults(func=_run)
