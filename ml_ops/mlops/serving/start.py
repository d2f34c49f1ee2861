"""Start serving a registered model's alias: checks first, then the model, store, log and watcher."""
import datetime
import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mlops.errors import ConfigError, RegistryError
from mlops.lifecycle.registry import CHALLENGER as CHALLENGER_ALIAS
from mlops.lifecycle import rollout
from mlops.lifecycle.registry import RegistryClient
from mlops.observability.telemetry import CONNECTION_STRING_ENV, Telemetry, TelemetrySettings
from mlops.platform.home import mlops_home
from mlops.serving.metrics import ServingMetrics
from mlops.serving.model_slot import AliasWatcher, ModelSlot, load_version
from mlops.serving.online_store import OnlineFeatureStore
from mlops.serving.request_log import RequestLog
from mlops.serving.server import ServingApp, ServingOptions, ServingServer, require_token_off_loopback
from mlops.serving.split import TrafficSplit

logger = logging.getLogger(__name__)

CREATE_HINT = ("train and promote one with `mlops job run taxi_fares_training --target dev` "
               "(or `make demo`)")


@dataclass
class ServeSettings:
    model_name: str = "taxi_fares"
    alias: str = "Champion"
    # Beside the Champion, the Challenger: on a share of the requests, or in the shadow of all.
    challenger_percent: int = 0
    shadow: bool = False
    # The Challenger's share is its rollout's, read from the registry on every poll.
    follow_rollout: bool = False
    host: str = "127.0.0.1"
    port: int = 5050
    online_store: Path = Path("online_store")
    log_table: Path | None = None
    poll_seconds: float = 10.0
    max_feature_age_minutes: float = 60.0
    token: str = ""
    flush_rows: int = 5_000
    flush_seconds: float = 5.0
    queue_rows: int = 100_000
    max_body_bytes: int = 1 << 20
    registry_uri: str = ""
    read_timeout: float = 5.0
    request_timeout: float = 10.0
    telemetry_sample_rate: float = 0.1
    workers: int = 1

    def __post_init__(self):
        if self.workers < 1:
            raise ConfigError(f"--workers must be 1 or more, got {self.workers}")
        if self.follow_rollout and (self.shadow or self.challenger_percent):
            raise ConfigError("--follow-rollout takes the Challenger's share from its rollout; leave out "
                              "--challenger-percent and --shadow")
        if (self.split.active or self.follow_rollout) and self.alias != "Champion":
            raise ConfigError(f"a split or a shadow serves the Champion beside the {CHALLENGER_ALIAS}; "
                              f"--alias must be Champion, got {self.alias}")

    @property
    def split(self) -> TrafficSplit:
        return TrafficSplit(self.challenger_percent, self.shadow)


def first_model(registry: RegistryClient, alias: str):
    """The version ``alias`` names, loaded; ConfigError with the command that would create it."""
    if not registry.exists():
        raise ConfigError(f"model '{registry.name}' is not registered; {CREATE_HINT}")
    version = registry.alias_version(alias)
    if version is None:
        raise ConfigError(f"model '{registry.name}' has no alias '{alias}' (aliases: "
                          f"{registry.aliases() or 'none'}); {CREATE_HINT}, or set it with "
                          f"`mlops model promote {registry.name} <version>`")
    try:
        return load_version(registry, version)
    except RegistryError as error:
        raise ConfigError(f"cannot serve {registry.name}@{alias}: {error}") from None


def serving_telemetry(settings: ServeSettings) -> Telemetry:
    """The server's telemetry: Application Insights when its connection string is set, else JSON lines."""
    return Telemetry.start(TelemetrySettings(
        connection_string=os.environ.get(CONNECTION_STRING_ENV) or None,
        role_name=f"serving/{settings.model_name}",
        jsonl_path=mlops_home() / "runs" / f"serving-{settings.model_name}-telemetry.jsonl",
        dimensions={"model_name": settings.model_name, "alias": settings.alias},
        sample_rate=settings.telemetry_sample_rate))


def build_app(settings: ServeSettings, telemetry=None) -> tuple[ServingApp, "Watchers"]:
    """The app (model, feature store, request log and metrics) and its alias watcher, not started."""
    require_token_off_loopback(settings.host, settings.token)
    registry = RegistryClient(settings.model_name, settings.registry_uri)
    slot = ModelSlot(first_model(registry, settings.alias))
    max_age = datetime.timedelta(minutes=settings.max_feature_age_minutes)
    store = OnlineFeatureStore(settings.online_store, max_age)
    if not store.refresh():
        logger.warning("no online feature snapshot in %s yet: raw trips get the default window features "
                       "until feature engineering publishes one", settings.online_store)
    request_log = RequestLog(settings.log_table, slot.current.feature_names, settings.queue_rows,
                             settings.flush_rows, settings.flush_seconds) if settings.log_table else None
    metrics = ServingMetrics()
    metrics.serving(slot.current)
    if request_log is not None:
        metrics.read_log_counts_from(request_log)

    def switched(previous, model):
        metrics.switches.inc()
        metrics.serving(model)
        if telemetry is not None:
            telemetry.track_event("serving.model_switch", model_name=model.name, alias=settings.alias,
                                  from_version=previous.version, to_version=model.version)

    options = ServingOptions(settings.alias, settings.max_body_bytes, settings.token,
                             read_timeout=settings.read_timeout, request_timeout=settings.request_timeout)
    with_challenger = settings.split.active or settings.follow_rollout
    challenger_slot = _challenger(registry, slot) if with_challenger else None
    app = ServingApp(slot, store, request_log, options, metrics, telemetry, challenger_slot, settings.split)
    watchers = [AliasWatcher(registry, settings.alias, slot, settings.poll_seconds, on_switch=switched,
                             on_poll=store.refresh)]
    if challenger_slot is not None:
        follow = (lambda: _follow_rollout(registry, app)) if settings.follow_rollout else None
        if follow is not None:
            follow()
        watchers.append(AliasWatcher(registry, CHALLENGER_ALIAS, challenger_slot, settings.poll_seconds,
                                     on_poll=follow))
    return app, Watchers(watchers)


def _follow_rollout(registry: RegistryClient, app: ServingApp):
    """Serve the Challenger to the share its rollout has reached (0 once rolled back or promoted)."""
    version = app.challenger_slot.current.version
    share = rollout.served_share(registry, version)
    if share != app.split.challenger_percent:
        logger.info("rollout of version %s: the %s now answers %d%% of requests (was %d%%)", version,
                    CHALLENGER_ALIAS, share, app.split.challenger_percent)
        # One assignment: a request reads the old split or the new one, never a mix.
        app.split = TrafficSplit(share)


class Watchers:
    """The alias watchers of one server, started and stopped together."""

    def __init__(self, watchers: list):
        self.watchers = watchers

    def start(self):
        for watcher in self.watchers:
            watcher.start()

    def stop(self):
        for watcher in self.watchers:
            watcher.stop()


def _challenger(registry: RegistryClient, champion_slot: ModelSlot) -> ModelSlot:
    """The Challenger's slot; refused unless it is PASSED and reads the Champion's features."""
    challenger = first_model(registry, CHALLENGER_ALIAS)
    champion = champion_slot.current
    if tuple(challenger.feature_names) != tuple(champion.feature_names):
        raise ConfigError(f"cannot split traffic: the {CHALLENGER_ALIAS} (version {challenger.version}) "
                          f"reads features {', '.join(challenger.feature_names)}, the Champion (version "
                          f"{champion.version}) {', '.join(champion.feature_names)}")
    return ModelSlot(challenger)


def open_server(settings: ServeSettings, telemetry=None) -> tuple[ServingServer, "Watchers"]:
    """A started server and alias watcher in this process; stop both with :func:`close_server`."""
    app, watcher = build_app(settings, telemetry)
    server = ServingServer(app, settings.host, settings.port)
    server.start()
    watcher.start()
    logger.info("serving %s@%s (version %s) at %s", settings.model_name, settings.alias,
                app.slot.current.version, server.url)
    if app.challenger_slot is not None:
        logger.info("and %s version %s: %s", CHALLENGER_ALIAS, app.challenger_slot.current.version,
                    "in the shadow of every request" if settings.shadow
                    else f"{settings.challenger_percent}% of requests, sticky by key")
    return server, watcher


def settle_memory() -> None:
    """Keep what is loaded so far (imports, the model) out of the garbage collector's scans.

    It lives as long as the server; without this every full collection walks it again.
    """
    gc.collect()
    gc.freeze()


def close_server(server: ServingServer, watcher: "Watchers") -> None:
    watcher.stop()
    server.stop()
