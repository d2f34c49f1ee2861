"""``mlops table history|convert``: a table's DESCRIBE HISTORY; CONVERT TO DELTA of a Parquet folder."""
from mlops.cli import command
from mlops.config import JobConfig
from mlops.data.tables import TableStore


def _history(args):
    print_history(args.location, args.name)
    return 0


def print_history(location: str, name: str, spark=None):
    """Print DESCRIBE HISTORY of table ``name``, newest first: one line per version."""
    from mlops.data.table_history import COLUMNS, history_rows
    from mlops.lifecycle.model_admin import format_table
    from mlops.local.session import spark_session

    store = TableStore(spark or spark_session(), location)
    print(f"table {name} at {store.target(name).shown}")
    print(format_table(COLUMNS, history_rows(store, name)))


def _convert(args):
    from mlops.local.session import spark_session

    store = TableStore(spark_session(), args.location)
    version = store.convert(args.name)
    print(f"table {args.name} at {store.target(args.name).shown} is now a Delta table (version {version})")
    return 0


def register_cli(subparsers):
    """Add ``mlops table history`` and ``mlops table convert``."""
    parser = subparsers.add_parser("table", help="look at Delta tables")
    commands = parser.add_subparsers(dest="table_command", required=True)
    for name, help_text, example, run in (
            ("history", "every version of a table (DESCRIBE HISTORY): time, operation, rows, engine",
             "taxi_fares_predictions", _history),
            ("convert", "make a Parquet table folder a Delta table, in place (CONVERT TO DELTA)",
             "training_trips", _convert)):
        subcommand = commands.add_parser(name, help=help_text)
        subcommand.add_argument("name", help=f"the table, e.g. {example}")
        location = JobConfig.default_of("table_location")
        subcommand.add_argument("--location", default=location,
                                help=f"the table_location (default {location})")
        subcommand.set_defaults(func=command(run))
