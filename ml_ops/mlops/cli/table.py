"""``mlops table history|convert``: a table's DESCRIBE HISTORY; CONVERT TO DELTA of a Parquet folder."""
from mlops.cli import command
from mlops.config import JobConfig
from mlops.data.tables import TableStore


def _history(args):
    print_history(args.location, args.name)
    return 0


def print_history(location: str, name: str, spark=None):
    """Print DESCRIBE HISTORY of table ``name``, newest first: one line per version."""
    from mlops.lifecycle.model_admin import format_table
    from mlops.local.session import spark_session

    store = TableStore(spark or spark_session(), location)
    rows = [[entry["version"], entry["timestamp"].strftime("%Y-%m-%d %H:%M:%S"), entry["operation"],
             _rows_written(entry.get("operationMetrics") or {}), entry.get("engineInfo") or "-"]
            for entry in store.history(name)]
    print(f"table {name} at {store.target(name).shown}")
    print(format_table(["version", "time (UTC)", "operation", "rows written", "engine"], rows))


def _rows_written(metrics: dict) -> str:
    """The rows a commit wrote, from Delta's operation metrics; '-' for commits that write none."""
    if "numTargetRowsInserted" in metrics:
        return f"{metrics['numTargetRowsInserted']} new, {metrics.get('numTargetRowsUpdated', 0)} updated"
    # Spark's Delta writes say numOutputRows; the online server's delta-rs appends num_added_rows.
    return metrics.get("numOutputRows") or metrics.get("num_added_rows") or "-"


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
        subcommand.add_argument("--location", default=JobConfig.table_location,
                                help=f"the table_location (default {JobConfig.table_location})")
        subcommand.set_defaults(func=command(run))
