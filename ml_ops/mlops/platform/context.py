"""Which job, run and task the running notebook belongs to.

On Databricks this comes from the notebook context. Locally, the runtime binds it with
:func:`bind` while a notebook runs, so code asks :func:`current_binding` and never imports
the runtime.
"""
import contextlib
import contextvars
import json
import uuid
from dataclasses import dataclass
from typing import Iterator, Optional

from mlops.errors import ConfigError

# Attributes of the Databricks notebook context that name the job run, most specific first.
RUN_ID_ATTRIBUTES = ("multitaskParentRunId", "rootRunId", "runId")


@dataclass(frozen=True)
class RunContext:
    """Where the running code is: job fields are None outside a job, all None outside a notebook."""

    job_name: Optional[str] = None
    job_run_id: Optional[str] = None
    task: Optional[str] = None
    notebook_path: Optional[str] = None


_binding: contextvars.ContextVar[RunContext] = contextvars.ContextVar(
    "mlops_run_context", default=RunContext())


def current_binding() -> RunContext:
    """The context the local runtime bound for the notebook running now."""
    return _binding.get()


@contextlib.contextmanager
def bind(context: RunContext) -> Iterator[RunContext]:
    """Make ``context`` the current one while a notebook runs."""
    token = _binding.set(context)
    try:
        yield context
    finally:
        _binding.reset(token)


def adhoc_run_id() -> str:
    return f"adhoc-{uuid.uuid4().hex[:12]}"


def local_run_context(task: str) -> RunContext:
    """The bound job run, or an ad-hoc run for a notebook started on its own."""
    bound = current_binding()
    if bound.job_run_id:
        return RunContext(job_name=bound.job_name or "notebook", job_run_id=str(bound.job_run_id),
                          task=task, notebook_path=bound.notebook_path)
    return RunContext(job_name="notebook", job_run_id=adhoc_run_id(), task=task,
                      notebook_path=bound.notebook_path)


def databricks_run_context(dbutils, task: str) -> RunContext:
    """The job run from the Databricks notebook context; an unreadable context names what is missing."""
    try:
        raw = dbutils.notebook.entry_point.getDbutils().notebook().getContext().safeToJson()
    except Exception as error:
        raise ConfigError(
            "cannot read the Databricks notebook context: dbutils.notebook.entry_point.getDbutils()"
            f".notebook().getContext().safeToJson() failed with {type(error).__name__}") from error
    try:
        attributes = json.loads(raw)["attributes"]
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError("the Databricks notebook context has no 'attributes' object; "
                          "cannot tell the job run") from error
    if not isinstance(attributes, dict):
        raise ConfigError("the Databricks notebook context has no 'attributes' object; "
                          "cannot tell the job run")
    notebook_path = attributes.get("notebook_path")
    if not attributes.get("jobId"):
        # An interactive run: no job, so its run id is made up here, once per task.
        return RunContext(job_name="notebook", job_run_id=adhoc_run_id(), task=task,
                          notebook_path=notebook_path)
    run_id = next((attributes[name] for name in RUN_ID_ATTRIBUTES if attributes.get(name)), None)
    if run_id is None:
        raise ConfigError(f"the Databricks notebook context of job {attributes['jobId']} names no run: "
                          f"none of {', '.join(RUN_ID_ATTRIBUTES)} is set")
    return RunContext(job_name=attributes.get("jobName") or f"job-{attributes['jobId']}",
                      job_run_id=str(run_id), task=task, notebook_path=notebook_path)
