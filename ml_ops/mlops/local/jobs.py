"""Run a Jobs API 2.1 job file locally, task by task, like a Databricks job run.

A job comes from the bundle (:mod:`mlops.local.bundle`) or a JSON job file, read and checked
by :mod:`mlops.local.job_file`.

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
    ``$MLOPS_HOME/runs/<run_id>.json`` is rewritten atomically after every task; what the task
    printed and logged (``output.txt``), its display output and its error traceback go,
    redacted, to ``$MLOPS_HOME/runs/<run_id>/<task_key>/``.
    A repair run re-runs the tasks of an earlier run that did not succeed.
"""
import contextlib
import hashlib
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from mlops.errors import JobError
from mlops.local import interrupts
from mlops.local.job_file import JobSpec, TaskSpec, load_job, reference_problem
from mlops.local.notebook import output_kept_in, run_notebook
from mlops.local.notebook_source import shown_path
from mlops.local.run_record import (EXCLUDED, FAILED, PENDING, RUNNING, SUCCESS, UPSTREAM_FAILED,
                                    RunRecord, now)
from mlops.local.session import LocalSession
from mlops.local.task_flow import COMPARISONS, blocked_by_upstream, substitute
from mlops.observability.redaction import REDACTED, SECRET_VALUE_MARKER, redact_text
from mlops.platform import home, locks
from mlops.platform.home import new_run_id, runs_dir

logger = logging.getLogger(__name__)

FAIL_WHEN_BUSY = "fail"
WAIT_WHEN_BUSY = "wait"

ERROR_FILE = "error.txt"
# What a task printed and logged, beside its display output and error.txt.
OUTPUT_FILE = "output.txt"
# States of a task that needs no repair.
DONE = (SUCCESS, EXCLUDED)

__all__ = ["EXCLUDED", "FAILED", "PENDING", "RUNNING", "SUCCESS", "UPSTREAM_FAILED", "JobSpec", "RunRecord",
           "TaskSpec", "load_job", "run_job", "task_parameters"]


def task_parameters(job: JobSpec, task: TaskSpec, overrides: dict[str, str]) -> dict[str, str]:
    """The widget values a task starts with, before dynamic references are substituted."""
    parameters = dict(task.base_parameters)
    for name in task.base_parameters:
        if name in overrides:
            parameters[name] = overrides[name]
    for name, default in job.parameters.items():
        parameters[name] = overrides.get(name, default)
    return parameters


def run_job(job: JobSpec | Path, overrides: Optional[dict[str, str]] = None,
            repair_run_id: Optional[str] = None, progress: Callable[[str], None] = print, spark=None,
            if_busy: str = FAIL_WHEN_BUSY) -> RunRecord:
    """Run a job (a bundle job, or a JSON job file), or repair an earlier run of it, and return its record.

    ``spark`` lets a caller share an existing SparkSession; otherwise one is created and
    kept for the rest of the process, as later jobs reuse it. When the job already has
    ``max_concurrent_runs`` runs in progress, ``if_busy`` says whether to fail or wait.
    """
    job = job if isinstance(job, JobSpec) else load_job(Path(job))
    if if_busy not in (FAIL_WHEN_BUSY, WAIT_WHEN_BUSY):
        raise JobError(f"if_busy must be {FAIL_WHEN_BUSY} or {WAIT_WHEN_BUSY}, got {if_busy!r}")
    overrides = dict(overrides or {})
    _close_abandoned_runs(progress)
    earlier = _repairable_run(job, repair_run_id) if repair_run_id else None
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
    for name, value in overrides.items():
        problem = reference_problem(value, job.parameters, [task.task_key for task in job.tasks])
        if problem:
            raise JobError(f"parameter '{name}' {problem}")
    with _run_slot(job, if_busy, progress), interrupts.sigterm_interrupts():
        record = _prepare_record(job, overrides, earlier)
        return _run_tasks(job, record, spark, progress)


def run_notebook_as_job(notebook, parameters: dict[str, str], progress: Callable[[str], None] = print,
                        spark=None) -> RunRecord:
    """Run one notebook as a one-task job: it gets a run id, a run record and an output folder.

    The generated job file declares the parameter names only; their values travel as overrides,
    which the run record keeps redacted, so no secret is written to it.
    """
    notebook = Path(notebook).resolve()
    if not notebook.is_file():
        raise JobError(f"notebook {notebook} does not exist")
    names = sorted(parameters)
    settings = {"name": f"notebook_{notebook.stem}", "max_concurrent_runs": 1000,
                "tasks": [{"task_key": notebook.stem,
                           "notebook_task": {"notebook_path": str(notebook),
                                             "base_parameters": {name: "" for name in names}}}]}
    text = json.dumps(settings, indent=2) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    job_file = home.mount_root("notebook_jobs") / f"{notebook.stem}-{digest}.json"
    if not job_file.is_file():
        temporary = job_file.with_name(f".{job_file.name}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, job_file)
    return run_job(job_file, parameters, progress=progress, spark=spark)


def _prepare_record(job: JobSpec, overrides: dict, earlier: Optional[RunRecord]) -> RunRecord:
    """A new record, or the earlier one with a new repair entry and its failed and skipped tasks reset."""
    if earlier is None:
        run_id = new_run_id()
        record = RunRecord(run_id=run_id, path=runs_dir() / f"{run_id}.json", job_name=job.name,
                           job_file=str(job.path.resolve()), parameters=overrides, state=RUNNING,
                           start_time=now())
    else:
        record = earlier
        record.parameters, record.state, record.end_time = overrides, RUNNING, None
        rerun = [task.task_key for task in job.tasks
                 if record.tasks.get(task.task_key, {}).get("state") not in DONE]
        record.repairs.append({"repair_id": len(record.repairs) + 1, "start_time": now(), "end_time": None,
                               "state": RUNNING, "tasks": rerun})
    record.pid = os.getpid()
    for task in job.tasks:
        if record.tasks.get(task.task_key, {}).get("state") not in DONE:
            what = {"condition": list(task.condition)} if task.condition else \
                {"run_job": task.run_job[0]} if task.run_job else \
                {"notebook_path": str(task.notebook_path)}
            record.tasks[task.task_key] = {"state": PENDING, **what,
                                           "parameters": task_parameters(job, task, overrides)}
    record.save()
    return record


def _run_tasks(job: JobSpec, record: RunRecord, spark, progress: Callable[[str], None]) -> RunRecord:
    session = LocalSession(spark=spark, job_name=job.name, job_run_id=record.run_id)
    for key, entry in record.tasks.items():
        if entry["state"] == SUCCESS:
            session.task_values[key] = dict(entry.get("task_values", {}))
    repair = record.repairs[-1] if record.repairs and record.repairs[-1]["state"] == RUNNING else None
    started = time.monotonic()
    to_run = [task for task in job.tasks if record.tasks[task.task_key]["state"] not in DONE]
    what = f"repair {repair['repair_id']} of run" if repair else "run"
    progress(f"job '{job.name}' {what} {record.run_id}: {len(to_run)} of {len(job.tasks)} tasks to run")
    try:
        # Start Spark up front so its start-up time is not charged to the first task.
        session.start()
        for position, task in enumerate(to_run, start=1):
            _run_task(job, task, record, session, f"[{position}/{len(to_run)}]", progress)
    finally:
        record.close()
        if repair:
            repair.update(state=record.state, end_time=record.end_time)
        record.save()
    progress(f"job '{job.name}' {record.state} in {time.monotonic() - started:.1f}s; "
             f"run record: {record.path}")
    for line in record.summary():
        progress(_redacted(line))
    if record.state == FAILED:
        progress(f"repair it (failed and skipped tasks only) with: {job.run_command} "
                 f"--repair {record.run_id}")
    return record


def _repairable_run(job: JobSpec, run_id: str) -> RunRecord:
    earlier = RunRecord.load(run_id)
    if earlier.job_name != job.name:
        raise JobError(f"run {run_id} is a run of job '{earlier.job_name}', not of '{job.name}'")
    if earlier.state == RUNNING:
        raise JobError(f"run {run_id} of job '{job.name}' is still running (process {earlier.pid}); "
                       "wait for it to end before repairing it")
    if earlier.repairs and earlier.repairs[-1]["state"] == SUCCESS:
        raise JobError(f"run {run_id} of job '{job.name}' was already repaired: repair "
                       f"{earlier.repairs[-1]['repair_id']} succeeded; nothing to repair")
    if all(entry.get("state") in DONE for entry in earlier.tasks.values()):
        raise JobError(f"run {run_id} of job '{job.name}' has no failed or skipped tasks; nothing to repair")
    return earlier


def _close_abandoned_runs(progress: Callable[[str], None]) -> None:
    """End the records that a killed process left RUNNING, so that they can be repaired."""
    # Imported here: MLflow is needed only when a killed run is found, and `mlops --help` stays quick.
    from mlops import orchestration
    from mlops.lifecycle import tracking

    for record in RunRecord.running():
        if record.abandoned():
            pid = record.pid
            record.close(interrupted=f"abandoned: process {pid} ended before the task did")
            if record.repairs and record.repairs[-1]["state"] == RUNNING:
                record.repairs[-1].update(state=record.state, end_time=record.end_time)
            record.save()
            killed = tracking.end_runs_of_job_run(record.run_id)
            orchestration.remove_temp_dirs_of(pid)
            progress(f"run {record.run_id} of job '{record.job_name}' was left RUNNING by a process that "
                     f"is gone; marked {record.state}" + (f", its MLflow run(s) {', '.join(killed)} KILLED"
                                                          if killed else "")
                     + f"; repair it with --repair {record.run_id}")


@contextlib.contextmanager
def _run_slot(job: JobSpec, if_busy: str, progress: Callable[[str], None]):
    """Hold one of the job's ``max_concurrent_runs`` slots for the whole run."""
    folder = home.mount_root("locks")
    paths = [locks.lock_path(folder, f"job-{job.name}-slot-{index}")
             for index in range(job.max_concurrent_runs)]
    waited = False
    while True:
        for path in paths:
            with locks.file_lock(path, wait_seconds=0) as held:
                if held:
                    yield
                    return
        if if_busy == FAIL_WHEN_BUSY:
            running = ", ".join(record.run_id for record in RunRecord.running()
                                if record.job_name == job.name) or "unknown"
            raise JobError(f"job '{job.name}' already has {job.max_concurrent_runs} run(s) in progress "
                           f"(max_concurrent_runs {job.max_concurrent_runs}): run {running}; wait for it, "
                           "or pass --if-busy wait to queue behind it")
        if not waited:
            progress(f"job '{job.name}' has {job.max_concurrent_runs} run(s) in progress; waiting for a slot")
            waited = True
        time.sleep(1.0)


def _run_task(job: JobSpec, task: TaskSpec, record: RunRecord, session: LocalSession, counter: str,
              progress: Callable[[str], None]) -> None:
    entry = record.tasks[task.task_key]
    blocked, why = blocked_by_upstream(task, record)
    if blocked:
        entry.update(state=blocked, error=f"not run: {why}")
        record.save()
        progress(f"{counter} {task.task_key} ... {blocked} ({why})")
        return
    if task.condition:
        _evaluate_condition(job, task, record, session, counter, progress)
        return
    if task.run_job:
        _run_child_job(job, task, record, session, counter, progress)
        return

    output_dir = runs_dir() / record.run_id / task.task_key
    if (output_dir / ERROR_FILE).exists():
        # A repair: the failed attempt's error stays, under the repair that followed it.
        (output_dir / ERROR_FILE).rename(output_dir / f"error.repair-{len(record.repairs)}.txt")
    entry.update(state=RUNNING, start_time=now(), output_dir=str(output_dir))
    record.save()
    progress(f"{counter} {task.task_key} ... started ({shown_path(task.notebook_path)})")
    started = time.monotonic()
    session.task_key = task.task_key
    session.output_dir = output_dir
    session.task_values.pop(task.task_key, None)
    try:
        parameters = substitute(entry["parameters"], job, task, record, session)
        entry["parameters"] = parameters
        with output_kept_in(output_dir / OUTPUT_FILE):
            result = run_notebook(task.notebook_path, parameters, session)
        entry.update(state=SUCCESS, task_values=result.task_values, exit_value=result.exit_value)
    except Exception as error:
        if interrupts.interrupted_by():
            # The signal reached Spark's JVM first: the stage failed because the run was stopped.
            raise KeyboardInterrupt(f"interrupted by {interrupts.interrupted_by()}") from error
        # Any failure fails the task, as on Databricks; the record and error.txt keep the details.
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ERROR_FILE).write_text(_redacted("".join(traceback.format_exception(error))),
                                             encoding="utf-8")
        entry.update(state=FAILED, task_values=session.task_values.get(task.task_key, {}),
                     error=_redacted(" ".join(f"{type(error).__name__}: {error}".split()))[:1000])
        logger.debug("task %s failed", task.task_key, exc_info=True)
    finally:
        session.task_key = None
        entry["duration_seconds"] = round(time.monotonic() - started, 3)
        record.save()
    progress(f"{counter} {task.task_key} ... {entry['state']} in {entry['duration_seconds']:.1f}s"
             + (f": {entry['error']}" if entry["state"] == FAILED else ""))


def _run_child_job(job: JobSpec, task: TaskSpec, record: RunRecord, session: LocalSession, counter: str,
                   progress: Callable[[str], None]) -> None:
    """A run_job_task: run the other job with its job parameters; this task ends as that run does."""
    entry = record.tasks[task.task_key]
    child_key, parameters = task.run_job
    entry.update(state=RUNNING, start_time=now(), job=child_key)
    record.save()
    started = time.monotonic()
    try:
        parameters = substitute(parameters, job, task, record, session, job_values=entry["parameters"])
        entry["job_parameters"] = parameters
        child_job = job.other_job(child_key)
        entry["job_file"] = str(child_job.path)
        progress(f"{counter} {task.task_key} ... started job {child_key}")
        child = run_job(child_job, parameters, progress=lambda line: progress(f"    {line}"),
                        spark=session.spark)
        entry.update(state=child.state, child_run_id=child.run_id, child_run_record=str(child.path))
        if child.state != SUCCESS:
            entry["error"] = f"child run {child.run_id} of job '{child.job_name}' ended {child.state}"
    except (JobError, OSError) as error:
        entry.update(state=FAILED, error=_redacted(str(error))[:1000])
    finally:
        entry["duration_seconds"] = round(time.monotonic() - started, 3)
        record.save()
    detail = f": {entry['error']}" if entry["state"] != SUCCESS else f" (child run {entry['child_run_id']})"
    progress(f"{counter} {task.task_key} ... {entry['state']} in {entry['duration_seconds']:.1f}s{detail}")


def _evaluate_condition(job: JobSpec, task: TaskSpec, record: RunRecord, session: LocalSession, counter: str,
                        progress: Callable[[str], None]) -> None:
    """A condition task: compare its operands as numbers when both are, else as strings."""
    entry = record.tasks[task.task_key]
    op, left, right = task.condition
    try:
        operands = substitute({"left": left, "right": right}, job, task, record, session)
    except JobError as error:
        entry.update(state=FAILED, error=str(error))
        record.save()
        progress(f"{counter} {task.task_key} ... {FAILED}: {error}")
        return
    values = [operands["left"], operands["right"]]
    try:
        values = [float(value) for value in values]
    except ValueError:
        pass
    outcome = "true" if COMPARISONS[op](*values) else "false"
    entry.update(state=SUCCESS, outcome=outcome, operands=operands)
    record.save()
    progress(f"{counter} {task.task_key} ... condition {operands['left']!r} {op} {operands['right']!r} "
             f"is {outcome}")


def _redacted(text: str) -> str:
    return redact_text(text, secret_marker=SECRET_VALUE_MARKER)
