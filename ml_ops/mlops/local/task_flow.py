"""When a task of a local job run runs, and what its ``{{...}}`` references resolve to.

The Jobs API's ``run_if`` rules and condition outcomes decide a task's turn; dynamic value
references (``{{job.run_id}}``, ``{{job.parameters.<name>}}``, ``{{tasks.<task>.values.<key>}}``...)
are replaced with this run's values.
"""
import datetime
import json
import re
from typing import Optional

from mlops.errors import JobError
from mlops.local.job_file import _REFERENCE, JobSpec, TaskSpec, start_time_values
from mlops.local.run_record import EXCLUDED, FAILED, SUCCESS, UPSTREAM_FAILED, RunRecord
from mlops.local.session import LocalSession

_FAILED_STATES = (FAILED, UPSTREAM_FAILED)


def blocked_by_upstream(task: TaskSpec, record: RunRecord) -> tuple[str, str]:
    """(state, why) when ``task`` must not run, by its ``run_if`` and its upstream states; else ('', '').

    As in the Jobs API: a condition with the other outcome excludes its dependants; under the
    default ALL_SUCCESS, an excluded upstream excludes and a failed one blocks with UPSTREAM_FAILED.
    """
    states = {key: record.tasks[key]["state"] for key in task.depends_on}
    for key in task.depends_on:
        wanted = task.outcomes.get(key)
        if wanted is not None and states[key] == SUCCESS and record.tasks[key].get("outcome") != wanted:
            return EXCLUDED, f"condition {key} was {record.tasks[key].get('outcome')}"
    failed = [key for key, state in states.items() if state in _FAILED_STATES]
    succeeded = [key for key, state in states.items() if state == SUCCESS]
    if task.run_if == "ALL_DONE" or not states:
        return "", ""
    if task.run_if in ("ALL_SUCCESS", "NONE_FAILED") and failed:
        return UPSTREAM_FAILED, f"upstream task {', '.join(failed)} did not succeed"
    if task.run_if == "ALL_SUCCESS" and len(succeeded) < len(states):
        excluded = [key for key in states if key not in succeeded]
        return EXCLUDED, f"upstream task {', '.join(excluded)} was excluded"
    if task.run_if == "AT_LEAST_ONE_SUCCESS" and not succeeded:
        return (UPSTREAM_FAILED if failed else EXCLUDED), \
            "run_if AT_LEAST_ONE_SUCCESS: no upstream task succeeded"
    if task.run_if == "ALL_FAILED" and len(failed) < len(states):
        return EXCLUDED, "run_if ALL_FAILED: not every upstream task failed"
    if task.run_if == "AT_LEAST_ONE_FAILED" and not failed:
        return EXCLUDED, "run_if AT_LEAST_ONE_FAILED: no upstream task failed"
    return "", ""


COMPARISONS = {"EQUAL_TO": lambda a, b: a == b, "NOT_EQUAL": lambda a, b: a != b,
               "GREATER_THAN": lambda a, b: a > b, "GREATER_THAN_OR_EQUAL": lambda a, b: a >= b,
               "LESS_THAN": lambda a, b: a < b, "LESS_THAN_OR_EQUAL": lambda a, b: a <= b}


def substitute(parameters: dict[str, str], job: JobSpec, task: TaskSpec, record: RunRecord,
               session: LocalSession, job_values: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Replace ``{{...}}`` dynamic value references with this run's values.

    ``{{job.parameters.<name>}}`` is looked up in ``job_values``, by default ``parameters`` itself
    (a notebook task's parameters hold every job parameter).
    """
    job_values = parameters if job_values is None else job_values
    start = datetime.datetime.fromisoformat(record.start_time)
    static = {
        "job.id": f"local-{job.name}", "job.name": job.name, "job.run_id": record.run_id,
        "job.repair_count": str(len(record.repairs)), "task.name": task.task_key,
        "task.run_id": f"{record.run_id}-{task.task_key}",
        **start_time_values(start),
    }

    def value_of(match: re.Match) -> str:
        reference = match.group(1)
        if reference in static:
            return static[reference]
        if reference.startswith("job.parameters."):
            return job_values[reference[len("job.parameters."):]]
        upstream, _, key = reference[len("tasks."):].partition(".values.")
        values = session.task_values.get(upstream, {})
        if key not in values:
            raise JobError(f"task '{task.task_key}' refers to '{{{{{reference}}}}}', "
                           f"but task '{upstream}' set no task value '{key}'")
        value = values[key]
        return value if isinstance(value, str) else json.dumps(value)

    return {name: _REFERENCE.sub(value_of, value) for name, value in parameters.items()}
