"""``mlops model list|show|approve|rollback``: look at registered models, move the Champion by hand."""
import argparse
import getpass

from mlops.cli import command
from mlops.config import JobConfig

USAGE = """Look at registered models and move the Champion by hand.

    mlops model list
    mlops model show taxi_fares
    mlops model approve taxi_fares 4 --by alice
    mlops model rollback taxi_fares 2 --reason "v3 overcharges airport trips" --by alice
    mlops model promote taxi_fares 4 --reason "v4 fixed the airport trips" --by alice
    mlops model pin taxi_fares --reason "investigating drift"     mlops model unpin taxi_fares
    mlops model compare-online taxi_fares --start 2016-04-01 --end 2016-04-07

Every command reads the local tracking store by default (``MLFLOW_TRACKING_URI`` when set,
else ``$MLOPS_HOME/mlflow.db``); ``--registry-uri databricks-uc`` targets Unity Catalog.
Every action that happens logs an MLflow run, so the audit trail has who and why; a refused
action logs nothing. A rollback pins the Champion (``--no-pin`` to leave automatic promotion on).
"""
DEFAULT_EXPERIMENT = JobConfig.default_of("experiment_name")


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No login name in some containers; the audit then says so rather than guessing.
        return "unknown"


def _run(action):
    """A subcommand that prints what ``action`` returns; a refused action is one ``error:`` line."""
    def run(args):
        print(action(args))
        return 0
    return command(run)


def _admin(function_name: str, *argument_names, **keyword_names):
    """``model_admin.<function_name>`` called with these ``args`` attributes, imported when it runs."""
    def call(args):
        from mlops.lifecycle import model_admin

        positional = [getattr(args, name) for name in argument_names]
        keywords = {key: getattr(args, name) for key, name in keyword_names.items()}
        return getattr(model_admin, function_name)(*positional, **keywords)
    return call


def _profile(args) -> str:
    """Build and store the reference profile of an existing version (for monitoring)."""

    from mlops.config import TrainingConfig
    from mlops.data.tables import TableStore
    from mlops.lifecycle import tracking
    from mlops.lifecycle.registry import RegistryClient
    from mlops.local.session import spark_session
    from mlops.stages.profiles import profile_version

    config = TrainingConfig(registered_model_name=args.name, registry_uri=args.registry_uri,
                            table_location=args.location, predictions_table=args.predictions_table)
    tracking.configure(config)
    reference = profile_version(config, TableStore(spark_session(), args.location),
                                RegistryClient(args.name, args.registry_uri), args.version,
                                force=args.force, by=args.by)
    return (f"model {args.name} version {reference.model_version}: reference profile of {reference.rows} "
            f"held-out rows (rmse {reference.error['rmse']:.4f}) stored in "
            f"{args.predictions_table}_baseline and as the artifact of its training run")


def _compare_online(args) -> str:
    """Champion against Challenger on the inference log's labelled online rows."""
    import datetime

    from mlops.data.tables import TableStore
    from mlops.errors import ConfigError
    from mlops.lifecycle.registry import CHALLENGER, CHAMPION, RegistryClient
    from mlops.local.session import spark_session
    from mlops.monitoring import online_log
    from mlops.monitoring.online_comparison import ComparisonSettings

    registry = RegistryClient(args.name, args.registry_uri)
    versions = {alias: registry.alias_version(alias) for alias in (CHAMPION, CHALLENGER)}
    absent = [alias for alias, version in versions.items() if version is None]
    if absent:
        raise ConfigError(f"model {args.name} has no {' and no '.join(absent)}: an online comparison needs "
                          "both aliases")
    tables = TableStore(spark_session(), args.location)
    log = tables.read(args.predictions_table, missing_hint="score with mlops serve or a job first")
    result = online_log.compare_log(log, str(versions[CHAMPION]), str(versions[CHALLENGER]),
                                    args.start or datetime.date.min, args.end or datetime.date.max,
                                    ComparisonSettings(margin=args.margin, alpha=args.alpha))
    return (f"model {args.name}: challenger version {versions[CHALLENGER]} against champion version "
            f"{versions[CHAMPION]}: {result.line()}")


def _iso_date(text: str):
    import datetime

    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got '{text}'") from None


def register_cli(subparsers):
    parser = subparsers.add_parser("model", help="list, show, approve, promote, roll back and pin models",
                                   description=USAGE,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="model_command", required=True)

    def add(name, help_text, function, *arguments):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--registry-uri", default="",
                         help="registry URI; 'databricks-uc' for Unity Catalog (default: the tracking store)")
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(func=_run(function))
        return sub

    name = (("name",), {"help": "registered model name (catalog.schema.model for Unity Catalog)"})
    version = (("version",), {"help": "model version number"})
    by = (("--by",), {"default": _current_user(), "help": "who asks (default: the current user)"})
    experiment = (("--experiment",), {"default": DEFAULT_EXPERIMENT,
                                      "help": "MLflow experiment of the audit run"})
    location = (("--location",), {"default": "dev.taxi_fares",
                                  "help": "the table_location (default dev.taxi_fares)"})
    predictions_table = (("--predictions-table",), {
        "default": "taxi_fares_predictions", "help": "the inference log (default taxi_fares_predictions)"})
    add("list", "registered models with their Champion and Challenger", _admin("list_models", "registry_uri"))
    add("show", "versions, aliases, validation status, approval and history of one model",
        _admin("show_model", "name", "registry_uri"), name)
    add("approve", "make a PASSED version awaiting approval the Champion",
        _admin("approve", "name", "version", "by", "registry_uri", "experiment"),
        name, version, by, experiment)
    reason = (("--reason",), {"required": True, "help": "why (kept on the version and in the history)"})
    add("rollback", "move the Champion back to an earlier PASSED version, and pin it",
        _admin("rollback", "name", "version", "reason", "by", "registry_uri", "experiment", pin="pin"),
        name, version, reason, by, experiment,
        (("--no-pin",), {"dest": "pin", "action": "store_false",
                         "help": "leave automatic promotion on after the rollback"}))
    add("profile", "build the monitoring reference of an existing version from its held-out rows",
        _profile, name, version, location, predictions_table,
        (("--force",), {"action": "store_true",
                        "help": "rebuild an existing profile (recorded in the model's history)"}), by)
    add("promote", "make any PASSED version the Champion (a roll-forward)",
        _admin("promote", "name", "version", "reason", "by", "registry_uri", "experiment"),
        name, version, reason, by, experiment)
    add("pin", "stop automatic promotion: deploy tasks leave the Champion where it is",
        _admin("pin", "name", "reason", "by", "registry_uri", "experiment"), name, reason, by, experiment)
    add("compare-online", "judge the Challenger against the Champion on labelled online rows of the log",
        _compare_online, name, location, predictions_table,
        (("--start",), {"type": _iso_date, "default": None, "help": "first pickup date (default: all)"}),
        (("--end",), {"type": _iso_date, "default": None, "help": "last pickup date (default: all)"}),
        (("--margin",), {"type": float, "default": 0.05,
                         "help": "how much worse in rmse still counts as no worse (default 0.05)"}),
        (("--alpha",), {"type": float, "default": 0.05,
                        "help": "the error rate of a verdict (default 0.05)"}))
    add("unpin", "restart automatic promotion",
        _admin("unpin", "name", "by", "registry_uri", "experiment"), name, by, experiment)
