"""Which job, run and task the current notebook belongs to."""
import json
import logging
import uuid
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    job_name: str
    job_run_id: str
    task: str


def current(dbutils, task: str) -> RunContext:
    """The Databricks notebook context when there is one, else the local runtime's."""
    databricks = _databricks_context(dbutils)
    if databricks:
        return RunContext(job_name=databricks.get("jobName") or "notebook",
                          job_run_id=str(databricks.get("multitaskParentRunId")
                                         or databricks.get("rootRunId") or databricks.get("runId")
                                         or _adhoc_id()),
                          task=task)
    from mlops.local.session import current_context

    local = current_context()
    if local and local.job_run_id:
        return RunContext(job_name=local.job_name or "notebook", job_run_id=str(local.job_run_id),
                          task=task)
    return RunContext(job_name="notebook", job_run_id=_adhoc_id(), task=task)


def _adhoc_id():
    return f"adhoc-{uuid.uuid4().hex[:12]}"


def _databricks_context(dbutils):
    try:
        raw = dbutils.notebook.entry_point.getDbutils().notebook().getContext().safeToJson()
    except Exception:
        # Not on Databricks (or an older runtime): the local context applies.
        return None
    try:
        return json.loads(raw).get("attributes", {})
    except (TypeError, ValueError):
        logger.warning("unreadable Databricks notebook context; using an ad-hoc run id")
        return None
