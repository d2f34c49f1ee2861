"""Look at registered models and move the Champion by hand (``mlops model ...``).

    mlops model list
    mlops model show taxi_fares
    mlops model approve taxi_fares 4 --by alice
    mlops model rollback taxi_fares 2 --reason "v3 overcharges airport trips" --by alice

Every command reads the local tracking store by default (``MLFLOW_TRACKING_URI`` when set,
else ``$MLOPS_HOME/mlflow.db``); ``--registry-uri databricks-uc`` targets Unity Catalog.
``approve`` and ``rollback`` also log an MLflow run, so the audit trail has who and why.
"""
import datetime
import logging

import mlflow

from mlops.config import JobConfig
from mlops.lifecycle import tracking
from mlops.lifecycle.registry import (APPROVAL_TAG, CHALLENGER, CHAMPION, VALIDATION_STATUS_TAG,
                                      RegistryClient, registered_models)

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "/Shared/taxi_fares"
VERSION_COLUMNS = ("version", "aliases", "validation", "approval", "rmse", "created (UTC)", "run id")

# (version tag holding the time, what happened, version tag holding who, tags shown as the detail)
HISTORY_EVENTS = (
    ("validated_at", "validated", None, ("model_validation_status",)),
    ("promotion_decided_at", "deploy decision", None,
     ("promotion_decision", "promotion_compared_with", "promotion_challenger_rmse",
      "promotion_reference_rmse")),
    ("approved_at", "approved", "approved_by", ()),
    ("champion_set_at", "became Champion", "champion_set_by",
     ("champion_set_via", "champion_previous_version")),
    ("champion_replaced_at", "lost Champion", None, ("champion_replaced_by",)),
    ("rollback_at", "rolled back to", "rollback_by", ("rollback_from_version", "rollback_reason")),
)


def format_table(headers, rows) -> str:
    """Rows of text as aligned columns under a header line."""
    table = [list(map(str, headers))] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[index]) for row in table) for index in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _when(timestamp_ms) -> str:
    if not timestamp_ms:
        return ""
    moment = datetime.datetime.fromtimestamp(timestamp_ms / 1000, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def list_models(registry_uri: str = "") -> str:
    rows = []
    for model in registered_models(registry_uri):
        aliases = model.aliases or {}
        latest = max((int(version.version) for version in model.latest_versions or []), default="")
        rows.append([model.name, latest, aliases.get(CHAMPION, "-"), aliases.get(CHALLENGER, "-"),
                     _when(model.last_updated_timestamp)])
    if not rows:
        return "no registered models"
    return format_table(["name", "latest version", "Champion", "Challenger", "updated (UTC)"], rows)


def show_model(name: str, registry_uri: str = "") -> str:
    """The versions table (aliases, status, approval, rmse) and the lifecycle history of ``name``."""
    registry = RegistryClient(name, registry_uri)
    aliases_by_version = {}
    for alias, version in registry.aliases().items():
        aliases_by_version.setdefault(version, []).append(alias)
    rows, events = [], []
    for version in registry.list_versions():
        number = str(version.version)
        rmse = registry.run(version.run_id, number).data.metrics.get("rmse") if version.run_id else None
        rows.append([number, ",".join(sorted(aliases_by_version.get(number, []))) or "-",
                     version.tags.get(VALIDATION_STATUS_TAG, "-"), version.tags.get(APPROVAL_TAG, "-"),
                     f"{rmse:.4f}" if rmse is not None else "-", _when(version.creation_timestamp),
                     version.run_id or "-"])
        events += _history(version)
    text = [f"model {name}", "",
            format_table(VERSION_COLUMNS, rows)]
    if events:
        events.sort(key=lambda event: (event[0], int(event[1])))
        text += ["", "history", "",
                 format_table(["when (UTC)", "version", "event", "by", "detail"], events)]
    return "\n".join(text)


def _history(version) -> list:
    events = []
    for time_tag, what, by_tag, detail_tags in HISTORY_EVENTS:
        when = version.tags.get(time_tag)
        if when:
            detail = " ".join(f"{tag}={version.tags[tag]}" for tag in detail_tags if tag in version.tags)
            events.append([when.replace("T", " ").split("+")[0], str(version.version), what,
                           version.tags.get(by_tag, "-") if by_tag else "-", detail or "-"])
    return events


def _audited(action: str, name: str, version: str, by: str, registry_uri: str, experiment: str,
             reason: str = ""):
    """An MLflow run around a manual Champion move; it ends FAILED if the move is refused."""
    tracking.configure(JobConfig(registered_model_name=name, registry_uri=registry_uri,
                                 experiment_name=experiment))
    tags = {"action": action, "model_name": name, "model_version": str(version), "by": by}
    if reason:
        tags["reason"] = reason
    return mlflow.start_run(run_name=f"model {action} {name} v{version}", tags=tags)


def approve(name: str, version: str, by: str, registry_uri: str = "",
            experiment: str = DEFAULT_EXPERIMENT) -> str:
    registry = RegistryClient(name, registry_uri)
    with _audited("approve", name, version, by, registry_uri, experiment) as run:
        previous = registry.approve(version, by)
        registry.set_tags(version, {"approval_run_id": run.info.run_id})
    return (f"model {name} version {version} approved by {by}: it is now the {CHAMPION} "
            f"(was {'version ' + previous if previous else 'none'})")


def rollback(name: str, version: str, reason: str, by: str, registry_uri: str = "",
             experiment: str = DEFAULT_EXPERIMENT) -> str:
    registry = RegistryClient(name, registry_uri)
    with _audited("rollback", name, version, by, registry_uri, experiment, reason) as run:
        previous = registry.rollback(version, by, reason)
        registry.set_tags(version, {"rollback_run_id": run.info.run_id})
    return f"model {name}: {CHAMPION} rolled back from version {previous} to version {version} by {by}"
