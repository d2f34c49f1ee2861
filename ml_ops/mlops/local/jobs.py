"""Run a Jobs API 2.1 job file locally, task by task, like a Databricks job run.

The job file is read by :mod:`mlops.local.job_file`.

Parameters
    A task gets its ``base_parameters`` and the job ``parameters`` (defaults), the job
    parameters winning on the same name, as on Databricks. An override (``-p name=value``)
    of a job parameter reaches every task; an override of a task parameter reaches every
    task whose ``base_parameters`` declare that name, and no other, so a notebook that
    rejects unknown parameters is not handed a sibling's. Overrides must name a declared
    parameter. Dynamic value references such as ``{{job.run_id}}``, ``{{task.name}}``,
    ``{{job.parameters.<name>}}`` and ``{{tasks.<task>.values.<key>}}`` are substituted.

Runs
    Tasks run one after another in dependency order in this process, sharing one Spark
    session; task values pass between tasks as on Databricks. When a task fails, the tasks
    downstream of it end ``UPSTREAM_FAILED`` and the run ends ``FAILED``. The run record
    ``$MLOPS_HOME/runs/<run_id>.json`` is rewritten atomically after every task; the task's
    display output and redacted error traceback go to ``$MLOPS_HOME/runs/<run_id>/<task_key>/``.
    A repair run re-runs the tasks of an earlier run that did not succeed.
"""
import datetime
import json
import logging
import re
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from mlops.errors import JobError
from mlops.local.job_file import _REFERENCE, JobSpec, TaskSpec, load_job
from mlops.local.notebook import run_notebook
from mlops.local.notebook_source import shown_path
from mlops.local.run_record import FAILED, PENDING, RUNNING, SUCCESS, UPSTREAM_FAILED, RunRecord
from mlops.local.session import LocalSession
from mlops.observability.redaction import REDACTED, SECRET_VALUE_MARKER, redact_text
from mlops.platform.home import new_run_id, runs_dir

logger = logging.getLogger(__name__)

__all__ = ["FAILED", "PENDING", "RUNNING", "SUCCESS", "UPSTREAM_FAILED", "JobSpec", "RunRecord", "TaskSpec",
           "load_job", "run_job", "task_parameters"]


def task_parameters(job: JobSpec, task: TaskSpec, overrides: dict[str, str]) -> dict[str, str]:
    """The widget values a task starts with, before dynamic references are substituted."""
    parameters = dict(task.base_parameters)
    for name in task.base_parameters:
        if name in overrides:
            parameters[name] = overrides[name]
    for name, default in job.parameters.items():
        parameters[name] = overrides.get(name, default)
    return parameters


def run_job(job_file: Path, overrides: Optional[dict[str, str]] = None, repair_run_id: Optional[str] = None,
            progress: Callable[[str], None] = print, spark=None) -> RunRecord:
    """Run a job file (or repair an earlier run of it) and return its run record.

    ``spark`` lets a caller share an existing SparkSession; otherwise one is created and
    kept for the rest of the process, as later jobs reuse it.
    """
    job = load_job(Path(job_file))
    overrides = dict(overrides or {})
    earlier = _earlier_run(job, repair_run_id) if repair_run_id else None
    if earlier is not None:
        withheld = sorted(name for name, value in earlier.parameters.items()
                          if value == REDACTED and name not in overrides)
        if withheld:
            raise JobError(f"run {repair_run_id} recorded {', '.join(withheld)} redacted, as secret; "
                           f"pass {'them' if len(withheld) > 1 else 'it'} again with -p name=value")
        overrides = {**earlier.parameters, **overrides}
    unknown = sorted(set(overrides) - job.parameter_names())
    if unknown:
        valid = sorted(job.parameter_names())
        raise JobError(f"job '{job.name}' has no parameter {', '.join(repr(name) for name in unknown)}; "
                       f"valid names: {', '.join(valid) or 'none (the job declares no parameters)'}")

    run_id = new_run_id()
    record = RunRecord(run_id=run_id, path=runs_dir() / f"{run_id}.json", job_name=job.name,
                       job_file=str(job.path.resolve()), parameters=overrides, state=RUNNING,
                       start_time=_now(), repair_of=repair_run_id)
    session = LocalSession(spark=spark, job_name=job.name, job_run_id=run_id)
    for task in job.tasks:
        record.tasks[task.task_key] = {"state": PENDING, "notebook_path": str(task.notebook_path),
                                       "parameters": task_parameters(job, task, overrides)}
    if earlier is not None:
        for key, entry in earlier.tasks.items():
            if key in record.tasks and entry.get("state") == SUCCESS:
                record.tasks[key] = {**entry, "from_run": entry.get("from_run", earlier.run_id)}
                session.task_values[key] = dict(entry.get("task_values", {}))
    record.save()

    started = time.monotonic()
    to_run = [task for task in job.tasks if record.tasks[task.task_key]["state"] != SUCCESS]
    what = f"repair of run {repair_run_id}" if repair_run_id else "run"
    progress(f"job '{job.name}' {what} {run_id}: {len(to_run)} of {len(job.tasks)} tasks to run")
    try:
        # Start Spark up front so its start-up time is not charged to the first task.
        session.start()
        for position, task in enumerate(to_run, start=1):
            _run_task(job, task, record, session, f"[{position}/{len(to_run)}]", progress)
    finally:
        states = [entry["state"] for entry in record.tasks.values()]
        record.state = SUCCESS if all(state == SUCCESS for state in states) else FAILED
        record.end_time = _now()
        record.save()
    progress(f"job '{job.name}' {record.state} in {time.monotonic() - started:.1f}s; "
             f"run record: {record.path}")
    return record


def _earlier_run(job: JobSpec, run_id: str) -> RunRecord:
    earlier = RunRecord.load(run_id)
    if earlier.job_name != job.name:
        raise JobError(f"run {run_id} is a run of job '{earlier.job_name}', not of '{job.name}'")
    if all(entry.get("state") == SUCCESS for entry in earlier.tasks.values()):
        raise JobError(f"run {run_id} of job '{job.name}' has no failed or skipped tasks; nothing to repair")
    return earlier


def _run_task(job: JobSpec, task: TaskSpec, record: RunRecord, session: LocalSession, counter: str,
              progress: Callable[[str], None]) -> None:
    entry = record.tasks[task.task_key]
    failed_upstream = [key for key in task.depends_on if record.tasks[key]["state"] != SUCCESS]
    if failed_upstream:
        entry.update(state=UPSTREAM_FAILED,
                     error=f"not run: upstream task {', '.join(failed_upstream)} did not succeed")
        record.save()
        progress(f"{counter} {task.task_key} ... {UPSTREAM_FAILED} (upstream {', '.join(failed_upstream)})")
        return

    output_dir = runs_dir() / record.run_id / task.task_key
    entry.update(state=RUNNING, start_time=_now(), output_dir=str(output_dir))
    record.save()
    progress(f"{counter} {task.task_key} ... started ({shown_path(task.notebook_path)})")
    started = time.monotonic()
    session.task_key = task.task_key
    session.output_dir = output_dir
    session.task_values.pop(task.task_key, None)
    try:
        parameters = _substitute(entry["parameters"], job, task, record, session)
        entry["parameters"] = parameters
        result = run_notebook(task.notebook_path, parameters, session)
        entry.update(state=SUCCESS, task_values=result.task_values, exit_value=result.exit_value)
    except Exception as error:
        # Any failure fails the task, as on Databricks; the record and error.txt keep the details.
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "error.txt").write_text(_redacted("".join(traceback.format_exception(error))),
                                              encoding="utf-8")
        entry.update(state=FAILED, task_values=session.task_values.get(task.task_key, {}),
                     error=_redacted(" ".join(f"{type(error).__name__}: {error}".split()))[:1000])
        logger.debug("task %s failed", task.task_key, exc_info=True)
    finally:
        session.task_key = None
        entry["duration_seconds"] = round(time.monotonic() - started, 3)
        if entry["state"] == RUNNING:
            entry.update(state=FAILED, error="interrupted")
        record.save()
    progress(f"{counter} {task.task_key} ... {entry['state']} in {entry['duration_seconds']:.1f}s"
             + (f": {entry['error']}" if entry["state"] == FAILED else ""))


def _substitute(parameters: dict[str, str], job: JobSpec, task: TaskSpec, record: RunRecord,
                session: LocalSession) -> dict[str, str]:
    """Replace ``{{...}}`` dynamic value references with this run's values."""
    start = datetime.datetime.fromisoformat(record.start_time)
    static = {
        "job.id": f"local-{job.name}", "job.name": job.name, "job.run_id": record.run_id,
        "job.repair_count": str(_repair_count(record)), "task.name": task.task_key,
        "task.run_id": f"{record.run_id}-{task.task_key}",
        "job.start_time.iso_date": start.date().isoformat(),
        "job.start_time.iso_datetime": start.isoformat(),
        "job.start_time.timestamp": str(int(start.timestamp() * 1000)),
    }

    def value_of(match: re.Match) -> str:
        reference = match.group(1)
        if reference in static:
            return static[reference]
        if reference.startswith("job.parameters."):
            return parameters[reference[len("job.parameters."):]]
        upstream, _, key = reference[len("tasks."):].partition(".values.")
        values = session.task_values.get(upstream, {})
        if key not in values:
            raise JobError(f"task '{task.task_key}' refers to '{{{{{reference}}}}}', "
                           f"but task '{upstream}' set no task value '{key}'")
        value = values[key]
        return value if isinstance(value, str) else json.dumps(value)

    return {name: _REFERENCE.sub(value_of, value) for name, value in parameters.items()}


def _repair_count(record: RunRecord) -> int:
    count, current = 0, record.repair_of
    while current:
        count += 1
        path = runs_dir() / f"{current}.json"
        current = json.loads(path.read_text(encoding="utf-8")).get("repair_of") if path.is_file() else None
    return count


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


def _redacted(text: str) -> str:
    return redact_text(text, secret_marker=SECRET_VALUE_MARKER)
