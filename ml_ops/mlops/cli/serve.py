"""``mlops serve``: serve a registered model's alias over HTTP until SIGTERM or Ctrl-C."""
import argparse
import os
import signal
import threading
from pathlib import Path

from mlops.cli import command
from mlops.platform import driver_path


# The options that tune the server, each a ServeSettings field of the same name: (type, default, help).
TUNING = {
    "--poll-seconds": (float, 10.0, "how often the alias and the feature snapshot are checked"),
    "--max-feature-age-minutes": (float, 60.0, "older window features fall back to the defaults"),
    "--flush-rows": (int, 5_000, "rows per inference log commit, at most"),
    "--flush-seconds": (float, 5.0, "the longest a logged row waits for its commit"),
    "--queue-rows": (int, 100_000, "rows the log queue holds; more are counted as not logged"),
    "--max-body-bytes": (int, 1 << 20, "larger bodies get a 413"),
    "--read-timeout": (float, 5.0, "seconds a request body may take to arrive; then 408"),
    "--request-timeout": (float, 10.0, "seconds an answer may take; then 504"),
    "--telemetry-sample-rate": (float, 0.1, "share of requests sent to Application Insights as items"),
    "--workers": (int, 1, "processes answering on the port; each loads the model and logs on its own"),
    "--challenger-percent": (int, 0, "percent of requests the Challenger alias answers, sticky by "
                                     "X-Request-Key or body"),
}


def _field(flag: str) -> str:
    return flag[2:].replace("-", "_")


def _token(secret: str) -> str:
    """The bearer token: from the secret scope ``SCOPE/KEY`` when named, else MLOPS_SERVING_TOKEN."""
    from mlops.errors import ConfigError
    from mlops.local.dbutils import LocalSecrets
    from mlops.observability.redaction import register_secret
    from mlops.serving.server import TOKEN_ENV

    if not secret:
        token = os.environ.get(TOKEN_ENV, "")
    else:
        scope, _, key = secret.partition("/")
        if not scope or not key:
            raise ConfigError(f"--token-secret must be SCOPE/KEY, got {secret!r}")
        token = LocalSecrets().get(scope, key)
    register_secret(token)
    return token


def _log_table_path(value: str) -> Path | None:
    """The inference log's folder: a path or URI, or a table name ``catalog.schema.table``."""
    from mlops import platform
    from mlops.platform import catalog

    if not value:
        return None
    if catalog.is_schema(value):
        catalog_name, schema, table = catalog.split_name(value)
        return Path(platform.table_target(f"{catalog_name}.{schema}", table).path)
    return Path(driver_path(value))


def _serve(args) -> int:
    from mlops.serving.start import ServeSettings, close_server, open_server, serving_telemetry, settle_memory

    settings = ServeSettings(
        model_name=args.model, alias=args.alias, host=args.host, port=args.port,
        online_store=Path(driver_path(args.online_store)), log_table=_log_table_path(args.log_table),
        token=_token(args.token_secret), registry_uri=args.registry_uri,
        shadow=args.shadow, follow_rollout=args.follow_rollout,
        **{_field(flag): getattr(args, _field(flag)) for flag in TUNING})
    if settings.workers > 1:
        return _serve_with_workers(settings)
    # Caught from the start: a client may see /ping answer and send SIGTERM before startup ends.
    stopped = threading.Event()
    for sign in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sign, lambda *_: stopped.set())
    telemetry = serving_telemetry(settings)
    try:
        server, watcher = open_server(settings, telemetry)
    except BaseException:
        telemetry.close()
        raise
    print(f"serving {args.model}@{args.alias} version {server.app.slot.current.version} at {server.url}",
          flush=True)
    if server.app.challenger_slot is not None:
        following = ", following its rollout" if args.follow_rollout else ""
        share = "in the shadow" if args.shadow else \
            f"on {server.app.split.challenger_percent}% of requests{following}"
        print(f"and {args.model}@Challenger version {server.app.challenger_slot.current.version} {share}",
              flush=True)
    settle_memory()
    stopped.wait()
    close_server(server, watcher)
    telemetry.close()
    log = server.app.request_log
    print(f"stopped; {log.written if log else 0} request rows logged, {log.dropped if log else 0} not logged",
          flush=True)
    return 0


def _serve_with_workers(settings) -> int:
    from mlops.serving.workers import serve_with_workers

    def listening(url):
        print(f"serving {settings.model_name}@{settings.alias} with {settings.workers} workers at {url}",
              flush=True)

    serve_with_workers(settings, listening)
    print(f"stopped; {settings.workers} workers", flush=True)
    return 0


def register_cli(subparsers):
    parser = subparsers.add_parser(
        "serve", help="serve a registered model's alias (MLflow scoring protocol)",
        description="Serve a registered model's alias over HTTP in the MLflow scoring protocol "
                    "(POST /invocations; GET /ping, /health, /version, /metrics) until SIGTERM or Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="taxi_fares", help="registered model name")
    parser.add_argument("--alias", default="Champion", help="the alias served; followed as it moves")
    parser.add_argument("--host", default="127.0.0.1", help="other than loopback needs MLOPS_SERVING_TOKEN")
    parser.add_argument("--port", type=int, default=5050, help="TCP port (0: any free port)")
    parser.add_argument("--online-store", default="dbfs:/mlops/taxi_fares/online_store",
                        help="the folder feature engineering publishes snapshots to")
    parser.add_argument("--log-table", default="",
                        help="the inference log: a table name catalog.schema.table, or a Delta folder "
                             "(empty: requests are not logged)")
    for flag, (kind, default, help_text) in TUNING.items():
        parser.add_argument(flag, type=kind, default=default, help=help_text)
    parser.add_argument("--shadow", action="store_true",
                        help="score every request with the Challenger alias too, answer with the Champion, "
                             "and log both (arm shadow)")
    parser.add_argument("--follow-rollout", action="store_true",
                        help="serve the Challenger alias to the share its rollout has reached (task "
                             "compare_online with rollout_plan), read on every poll")
    parser.add_argument("--token-secret", default="", metavar="SCOPE/KEY",
                        help="read the bearer token from this secret (locally MLOPS_SECRET_<SCOPE>_<KEY>); "
                             "empty: MLOPS_SERVING_TOKEN")
    parser.add_argument("--registry-uri", default="",
                        help="registry URI; 'databricks-uc' for Unity Catalog (empty: the tracking store)")
    parser.set_defaults(func=command(_serve))
