"""Run a Jobs API 2.1 job file locally, task by task, like a Databricks job run.

Job file
    The job settings JSON (``name``, ``tasks``, optional ``parameters``), or a ``jobs/get``
    answer with the settings under ``"settings"``. Only ``notebook_task`` tasks run; cluster,
    library, retry, timeout and notification settings are ignored locally.

Notebook paths
    A task's ``notebook_path`` is looked up, in order: as an absolute path; relative to the
    repository root (the parent of the job file's folder, e.g. ``databricks_jobs/..``);
    relative to the job file's folder; relative to the current directory. ``.py`` is added
    when the path has no suffix, as Databricks paths have none.

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
    display output and error traceback go to ``$MLOPS_HOME/runs/<run_id>/<task_key>/``.
    A repair run re-runs the tasks of an earlier run that did not succeed.
"""
import datetime
import json
import logging
import os
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from mlops.errors import ConfigError, JobError
from mlops.local.home import new_run_id, runs_dir
from mlops.local.notebook import run_notebook
from mlops.local.session import LocalSession
from mlops.secrets import REDACTED, redact_params

logger = logging.getLogger(__name__)

SUCCESS = "SUCCESS"
FAILED = "FAILED"
RUNNING = "RUNNING"
PENDING = "PENDING"
UPSTREAM_FAILED = "UPSTREAM_FAILED"

_REFERENCE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_STATIC_REFERENCES = ("job.id", "job.name", "job.run_id", "job.repair_count", "task.name", "task.run_id",
                      "job.start_time.iso_date", "job.start_time.iso_datetime", "job.start_time.timestamp")
_IGNORED_TASK_FIELDS = ("job_cluster_key", "new_cluster", "existing_cluster_id", "libraries",
                        "timeout_seconds", "max_retries", "min_retry_interval_millis", "retry_on_timeout",
                        "email_notifications",
                        "webhook_notifications", "notification_settings", "environment_key", "run_if",
                        "health", "description", "disable_auto_optimization")


@dataclass(frozen=True)
class TaskSpec:
    task_key: str
    notebook_path: Path
    depends_on: tuple[str, ...]
    base_parameters: dict[str, str]


@dataclass(frozen=True)
class JobSpec:
    """A validated job file; ``tasks`` are in the order they run."""

    name: str
    path: Path
    parameters: dict[str, str]
    tasks: tuple[TaskSpec, ...]

    def parameter_names(self) -> set[str]:
        names = set(self.parameters)
        for task in self.tasks:
            names.update(task.base_parameters)
        return names


@dataclass
class RunRecord:
    """The JSON record of one local job run, as written to ``path``."""

    run_id: str
    path: Path
    job_name: str
    job_file: str
    parameters: dict[str, str]
    state: str
    start_time: str
    end_time: Optional[str] = None
    repair_of: Optional[str] = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The record as written: parameters whose name or value looks secret are redacted."""
        tasks = {key: {**entry, "parameters": redact_params(entry["parameters"])} if "parameters" in entry
                 else entry for key, entry in self.tasks.items()}
        return {"run_id": self.run_id, "job_name": self.job_name, "job_file": self.job_file,
                "parameters": redact_params(self.parameters), "state": self.state,
                "start_time": self.start_time, "end_time": self.end_time, "repair_of": self.repair_of,
                "tasks": tasks}

    def save(self) -> None:
        """Write the record atomically, so a reader never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.run_id}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(self.to_json(), stream, indent=2, sort_keys=False)
                stream.write("\n")
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, run_id: str) -> "RunRecord":
        path = runs_dir() / f"{run_id}.json"
        if not path.is_file():
            recent = sorted(candidate.stem for candidate in runs_dir().glob("*.json"))[-10:]
            raise JobError(f"no run record for run id '{run_id}' in {runs_dir()}; "
                           f"recent run ids: {', '.join(reversed(recent)) or 'none'}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise JobError(f"run record {path} is not valid JSON: {error}") from error
        return cls(run_id=data["run_id"], path=path, job_name=data["job_name"], job_file=data["job_file"],
                   parameters=data.get("parameters", {}), state=data["state"], start_time=data["start_time"],
                   end_time=data.get("end_time"), repair_of=data.get("repair_of"),
                   tasks=data.get("tasks", {}))


# ---------------------------------------------------------------- loading

def load_job(job_file: Path) -> JobSpec:
    """Read and validate a job file; JobError says what is wrong and where."""
    job_file = Path(job_file)
    if not job_file.is_file():
        raise JobError(f"job file {job_file} not found")
    try:
        settings = json.loads(job_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise JobError(f"job file {job_file} is not valid JSON: {error}") from error
    if isinstance(settings, dict) and "settings" in settings and "tasks" not in settings:
        settings = settings["settings"]
    if not isinstance(settings, dict):
        raise JobError(f"job file {job_file} must hold a JSON object of job settings")
    name = settings.get("name") or job_file.stem
    parameters = _job_parameters(job_file, settings.get("parameters", []))
    raw_tasks = settings.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise JobError(f"job file {job_file} has no tasks")
    tasks = [_task(job_file, index, raw) for index, raw in enumerate(raw_tasks, start=1)]
    keys = [task.task_key for task in tasks]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise JobError(f"job file {job_file}: task_key {', '.join(duplicates)} used more than once")
    for task in tasks:
        for upstream in task.depends_on:
            if upstream not in keys:
                raise JobError(f"job file {job_file}: task '{task.task_key}' depends on unknown task "
                               f"'{upstream}' (tasks: {', '.join(keys)})")
    ordered = _topological_order(job_file, tasks)
    for task in ordered:
        _check_references(job_file, task, parameters, keys)
    return JobSpec(name=name, path=job_file, parameters=parameters, tasks=tuple(ordered))


def _job_parameters(job_file: Path, raw: Any) -> dict[str, str]:
    if not isinstance(raw, list):
        raise JobError(f"job file {job_file}: 'parameters' must be a list of {{\"name\", \"default\"}}")
    parameters = {}
    for entry in raw:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "default" not in entry:
            raise JobError(f"job file {job_file}: job parameter {entry!r} needs a 'name' and a 'default'")
        if not isinstance(entry["default"], str):
            raise JobError(f"job file {job_file}: job parameter '{entry['name']}' default must be a string, "
                           f"got {json.dumps(entry['default'])}")
        parameters[entry["name"]] = entry["default"]
    return parameters


def _task(job_file: Path, index: int, raw: Any) -> TaskSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("task_key"), str) or not raw["task_key"]:
        raise JobError(f"job file {job_file}: task #{index} has no task_key")
    key = raw["task_key"]
    notebook_task = raw.get("notebook_task")
    if notebook_task is None:
        kinds = [name for name in raw if name.endswith("_task")] or ["task without notebook_task"]
        raise JobError(f"job file {job_file}: task '{key}' is a {kinds[0]}; "
                       "the local runtime runs only notebook_task tasks")
    declared_path = notebook_task.get("notebook_path") if isinstance(notebook_task, dict) else None
    if not isinstance(declared_path, str) or not declared_path:
        raise JobError(f"job file {job_file}: task '{key}' has no notebook_task.notebook_path")
    base_parameters = notebook_task.get("base_parameters", {})
    if not isinstance(base_parameters, dict):
        raise JobError(f"job file {job_file}: task '{key}' base_parameters must be an object")
    for name, value in base_parameters.items():
        if not isinstance(value, str):
            raise JobError(f"job file {job_file}: task '{key}' parameter '{name}' must be a string "
                           f"(Databricks passes widget values as strings), got {json.dumps(value)}")
    depends_on = raw.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(
            isinstance(item, dict) and isinstance(item.get("task_key"), str) for item in depends_on):
        raise JobError(f"job file {job_file}: task '{key}' depends_on must be a list of "
                       "{\"task_key\": ...} objects")
    ignored = sorted(name for name in raw if name in _IGNORED_TASK_FIELDS)
    if ignored:
        logger.debug("task %s: ignoring %s locally", key, ", ".join(ignored))
    return TaskSpec(task_key=key, notebook_path=_resolve_notebook_path(job_file, key, declared_path),
                    depends_on=tuple(item["task_key"] for item in depends_on),
                    base_parameters=dict(base_parameters))


def _resolve_notebook_path(job_file: Path, task_key: str, declared: str) -> Path:
    job_folder = job_file.resolve().parent
    given = Path(declared)
    bases = [None] if given.is_absolute() else [job_folder.parent, job_folder, Path.cwd()]
    tried = []
    for base in bases:
        candidate = given if base is None else base / given
        options = [candidate] if candidate.suffix == ".py" else [candidate.with_name(candidate.name + ".py"),
                                                                 candidate]
        for option in options:
            tried.append(str(option))
            if option.is_file():
                return option.resolve()
    raise JobError(f"job file {job_file}: task '{task_key}' notebook '{declared}' not found "
                   f"(looked for {', '.join(tried)})")


def _topological_order(job_file: Path, tasks: list[TaskSpec]) -> list[TaskSpec]:
    """Dependency order; among tasks ready at the same time, file order."""
    by_key = {task.task_key: task for task in tasks}
    state: dict[str, str] = {}

    def visit(key: str, path: list[str]) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            cycle = path[path.index(key):] + [key]
            raise JobError(f"job file {job_file}: tasks depend on each other in a cycle: "
                           f"{' -> '.join(cycle)}")
        state[key] = "visiting"
        for upstream in by_key[key].depends_on:
            visit(upstream, path + [key])
        state[key] = "done"

    for task in tasks:
        visit(task.task_key, [])
    ordered: list[TaskSpec] = []
    placed: set[str] = set()
    while len(ordered) < len(tasks):
        ready = next(task for task in tasks
                     if task.task_key not in placed and set(task.depends_on) <= placed)
        ordered.append(ready)
        placed.add(ready.task_key)
    return ordered


def _check_references(job_file: Path, task: TaskSpec, job_parameters: dict[str, str],
                      keys: list[str]) -> None:
    values = [*task.base_parameters.values(), *job_parameters.values()]
    for value in values:
        for reference in _REFERENCE.findall(value):
            if reference in _STATIC_REFERENCES:
                continue
            if reference.startswith("job.parameters."):
                name = reference[len("job.parameters."):]
                if name in job_parameters:
                    continue
                raise JobError(f"job file {job_file}: task '{task.task_key}' refers to job parameter "
                               f"'{name}', which the job does not declare (job parameters: "
                               f"{', '.join(sorted(job_parameters)) or 'none'})")
            if reference.startswith("tasks.") and ".values." in reference:
                upstream = reference[len("tasks."):].split(".values.", 1)[0]
                if upstream in keys:
                    continue
                raise JobError(f"job file {job_file}: task '{task.task_key}' refers to task values "
                               f"of unknown task '{upstream}' in '{{{{{reference}}}}}'")
            raise JobError(
                f"job file {job_file}: task '{task.task_key}' uses '{{{{{reference}}}}}', which the local "
                f"runtime does not know (supported: {', '.join(_STATIC_REFERENCES)}, job.parameters.<name>, "
                "tasks.<task_key>.values.<key>)")


# ---------------------------------------------------------------- running

def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """Turn ``["name=value", ...]`` into a dict; ConfigError on a malformed or repeated name."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name.strip():
            raise ConfigError(f"parameter '{pair}' must look like name=value")
        if name in overrides:
            raise ConfigError(f"parameter '{name}' given more than once")
        overrides[name.strip()] = value
    return overrides


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
    progress(f"{counter} {task.task_key} ... started ({_shown(task.notebook_path)})")
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
        (output_dir / "error.txt").write_text("".join(traceback.format_exception(error)), encoding="utf-8")
        entry.update(state=FAILED, task_values=session.task_values.get(task.task_key, {}),
                     error=" ".join(f"{type(error).__name__}: {error}".split())[:1000])
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


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
