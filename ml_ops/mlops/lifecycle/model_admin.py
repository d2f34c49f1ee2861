"""Look at registered models and move the Champion by hand: what ``mlops model ...`` runs.

Every action that happens logs an MLflow run, so the audit trail has who and why; a refused
action logs nothing.
"""
import datetime
import logging

import mlflow

from mlops.config import JobConfig
from mlops.lifecycle import tracking
from mlops.lifecycle.registry import (APPROVAL_TAG, CHALLENGER, CHAMPION, VALIDATION_STATUS_TAG,
                                      RegistryClient, registered_models)

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = JobConfig.default_of("experiment_name")
VERSION_COLUMNS = ("version", "aliases", "validation", "approval", "rmse", "created (UTC)", "run id")


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
    """The versions table (aliases, status, approval, rmse), the pin, and the full event history."""
    registry = RegistryClient(name, registry_uri)
    aliases_by_version = {}
    for alias, version in registry.aliases().items():
        aliases_by_version.setdefault(version, []).append(alias)
    rows = []
    for version in registry.list_versions():
        number = str(version.version)
        rmse = registry.run(version.run_id, number).data.metrics.get("rmse") if version.run_id else None
        rows.append([number, ",".join(sorted(aliases_by_version.get(number, []))) or "-",
                     version.tags.get(VALIDATION_STATUS_TAG, "-"), version.tags.get(APPROVAL_TAG, "-"),
                     f"{rmse:.4f}" if rmse is not None else "-", _when(version.creation_timestamp),
                     version.run_id or "-"])
    text = [f"model {name}", "", format_table(VERSION_COLUMNS, rows)]
    pin = registry.pinned()
    if pin:
        text += ["", f"pinned by {pin['by']} at {pin['at']}: {pin['reason']} "
                     f"(automatic promotion is stopped; `mlops model unpin {name}` restarts it)"]
    events = [[event["at"].replace("T", " ")[:19], event["version"] or "-", event["event"],
               event["by"] or "-", _detail(event)] for event in registry.history.events()]
    if events:
        text += ["", "history", "", format_table(["when (UTC)", "version", "event", "by", "detail"], events)]
    return "\n".join(text)


def _detail(event) -> str:
    return " ".join(f"{key}={value}" for key, value in sorted(event["detail"].items())) or "-"


def _audit(action: str, name: str, version, by: str, registry_uri: str, experiment: str, reason: str = ""):
    """An MLflow run recording a manual action that happened; a refused action records none."""
    tracking.configure(JobConfig(registered_model_name=name, registry_uri=registry_uri,
                                 experiment_name=experiment))
    tags = {"action": action, "model_name": name, "model_version": str(version or ""), "by": by}
    if reason:
        tags["reason"] = reason
    with mlflow.start_run(run_name=f"model {action} {name}" + (f" v{version}" if version else ""),
                          tags=tags) as run:
        return run.info.run_id


def approve(name: str, version: str, by: str, registry_uri: str = "",
            experiment: str = DEFAULT_EXPERIMENT) -> str:
    registry = RegistryClient(name, registry_uri)
    previous = registry.approve(version, by)
    audit_run = _audit("approve", name, version, by, registry_uri, experiment)
    registry.set_tags(version, {"approval_run_id": audit_run})
    return (f"model {name} version {version} approved by {by}: it is now the {CHAMPION} "
            f"(was {'version ' + previous if previous else 'none'})")


def rollback(name: str, version: str, reason: str, by: str, registry_uri: str = "",
             experiment: str = DEFAULT_EXPERIMENT, pin: bool = True) -> str:
    registry = RegistryClient(name, registry_uri)
    previous = registry.rollback(version, by, reason, pin=pin)
    registry.set_tags(version, {"rollback_run_id": _audit("rollback", name, version, by, registry_uri,
                                                          experiment, reason)})
    pinned = f"; automatic promotion is pinned until `mlops model unpin {name}`" if pin else ""
    return (f"model {name}: {CHAMPION} rolled back from version {previous} to version {version} "
            f"by {by}{pinned}")


def promote(name: str, version: str, reason: str, by: str, registry_uri: str = "",
            experiment: str = DEFAULT_EXPERIMENT) -> str:
    registry = RegistryClient(name, registry_uri)
    previous = registry.promote(version, by, reason)
    registry.set_tags(version, {"promotion_run_id": _audit("promote", name, version, by, registry_uri,
                                                           experiment, reason)})
    return (f"model {name} version {version} promoted by {by}: it is now the {CHAMPION} "
            f"(was {'version ' + previous if previous else 'none'})")


def pin(name: str, reason: str, by: str, registry_uri: str = "",
        experiment: str = DEFAULT_EXPERIMENT) -> str:
    registry = RegistryClient(name, registry_uri)
    registry.pin(by, reason)
    _audit("pin", name, registry.alias_version(CHAMPION), by, registry_uri, experiment, reason)
    return f"model {name}: {CHAMPION} pinned by {by}; deploy tasks will not move it until it is unpinned"


def unpin(name: str, by: str, registry_uri: str = "", experiment: str = DEFAULT_EXPERIMENT) -> str:
    registry = RegistryClient(name, registry_uri)
    registry.unpin(by)
    _audit("unpin", name, registry.alias_version(CHAMPION), by, registry_uri, experiment)
    return f"model {name}: unpinned by {by}; deploy tasks promote better versions again"
