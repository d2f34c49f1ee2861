"""``mlops data generate``: write synthetic raw trips with the public dataset's schema."""
import time

from mlops.cli import command
from mlops.data.generator import generate, parse_date
from mlops.errors import ConfigError
from mlops.local.session import spark_session


def _run(args):
    from taxi_fares.data import DriftSettings

    drift = DriftSettings(distance_scale=args.distance_scale, fare_scale=args.fare_scale,
                          hour_shift=args.hour_shift, zip_shift=args.zip_shift)
    try:
        drift.validate()
    except ValueError as error:
        raise ConfigError(str(error)) from None
    started = time.monotonic()
    target = generate(spark_session(), args.rows, parse_date(args.start_date), parse_date(args.end_date),
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
    gen.set_defaults(func=command(_run))
