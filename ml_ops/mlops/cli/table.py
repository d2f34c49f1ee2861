"""``mlops table history|convert``: the versions of a local Delta table; a Parquet table made Delta."""
import datetime

from mlops.cli import command
from mlops.config import JobConfig
from mlops.data.tables import TableStore


def _history(args):
    print_history(args.location, args.name)
    return 0


def print_history(location: str, name: str):
    """Print every version of the local Delta table ``name``, newest first."""
    store = TableStore(None, location, "delta")
    rows = []
    for entry in store.history(name):
        when = datetime.datetime.fromtimestamp(entry["timestamp"] / 1000, datetime.timezone.utc)
        rows.append([entry["version"], when.strftime("%Y-%m-%d %H:%M:%S"), entry["operation"],
                     entry["mode"], entry["rows"] if entry["rows"] is not None else "-"])
    print(f"table {name} at {store.uri(name)}")
    from mlops.lifecycle.model_admin import format_table

    print(format_table(["version", "time (UTC)", "operation", "mode", "rows written"], rows))


def _convert(args):
    from mlops.local.session import spark_session

    store = TableStore(spark_session(), args.location, "delta")
    version = store.convert(args.name)
    print(f"table {args.name} at {store.uri(args.name)} is now a Delta table (version {version})")
    return 0


def register_cli(subparsers):
    """Add ``mlops table history`` and ``mlops table convert``."""
    parser = subparsers.add_parser("table", help="look at local Delta tables")
    commands = parser.add_subparsers(dest="table_command", required=True)
    history = commands.add_parser("history", help="every version of a table: operation, time, rows")
    history.add_argument("name", help="the table, e.g. taxi_fares_predictions")
    history.add_argument("--location", default=JobConfig.table_location,
                         help=f"the table_location (default {JobConfig.table_location})")
    history.set_defaults(func=command(_history))
    convert = commands.add_parser("convert", help="make a local Parquet table a Delta table, in place")
    convert.add_argument("name", help="the table, e.g. training_trips")
    convert.add_argument("--location", default=JobConfig.table_location,
                         help=f"the table_location (default {JobConfig.table_location})")
    convert.set_defaults(func=command(_convert))
