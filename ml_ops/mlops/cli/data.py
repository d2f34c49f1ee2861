"""``mlops data generate``: write synthetic raw trips with the public dataset's schema."""
import argparse
import time

from mlops.cli import command
from mlops.errors import ConfigError


def _run(args):
    from taxi_fares.data import DriftSettings

    from mlops.data.generator import generate, parse_date
    from mlops.local.session import spark_session

    drift = DriftSettings(distance_scale=args.distance_scale, fare_scale=args.fare_scale,
                          hour_shift=args.hour_shift, zip_shift=args.zip_shift)
    try:
        drift.validate()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    started = time.monotonic()
    spark = spark_session()
    labels = None
    if args.labels_table:
        from mlops.data.tables import TableStore

        labels = (TableStore(spark, args.table_location), args.labels_table)
    target = generate(spark, args.rows, parse_date(args.start_date), parse_date(args.end_date),
                      args.output, seed=args.seed, output_format=args.format, drift=drift, labels=labels,
                      append=args.append)
    print(f"wrote {args.rows} trips ({args.start_date}..{args.end_date}, seed {args.seed}) "
          f"to {target} in {time.monotonic() - started:.1f}s")
    return 0


def register_cli(subparsers):
    data = subparsers.add_parser("data", help="generate synthetic raw trips")
    commands = data.add_subparsers(dest="data_command", required=True)
    gen = commands.add_parser(
        "generate", help="write raw trips with the public dataset's schema",
        description="Write synthetic NYC taxi trips with the schema of nyctaxi-with-zipcodes/subsampled, "
                    "and a late-labels table beside them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    gen.add_argument("--rows", type=int, required=True, help="how many trips")
    gen.add_argument("--start-date", required=True, help="first pickup day, YYYY-MM-DD")
    gen.add_argument("--end-date", required=True, help="last pickup day, YYYY-MM-DD")
    gen.add_argument("--output", required=True, help="a local path or dbfs:/ path")
    gen.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same trips")
    gen.add_argument("--format", choices=("parquet", "csv"), default="parquet", help="file format")
    gen.add_argument("--append", action="store_true", help="add to the trips (and labels) already there")
    gen.add_argument("--labels-table", default="",
                     help="also write the trips' fares there by request_id, as late labels (empty: none)")
    gen.add_argument("--table-location", default="dev.taxi_fares", help="where --labels-table is kept")
    drift = gen.add_argument_group("drift", "shift distributions to simulate drift")
    drift.add_argument("--distance-scale", type=float, default=1.0, help="multiplies trip distances")
    drift.add_argument("--fare-scale", type=float, default=1.0, help="multiplies fares")
    drift.add_argument("--hour-shift", type=int, default=0, help="moves pickup hours by this many hours")
    drift.add_argument("--zip-shift", type=int, default=0, help="moves the busiest zips by this many places")
    gen.set_defaults(func=command(_run))
