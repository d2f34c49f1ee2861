"""Job settings (Jobs API 2.1), validated for the local runtime: tasks in the order they run.

A job comes from a bundle (:mod:`mlops.local.bundle`, the usual way) or from a JSON job file.
``notebook_task``, ``condition_task`` and ``run_job_task`` tasks run locally; a ``depends_on``
entry may name the ``outcome`` of a condition, and ``run_if`` says which upstream states let a
task run, as on Databricks. A ``run_job_task`` names the job it starts as
``${resources.jobs.<job key>.id}``: in a bundle, that job of the same bundle and target; for a
JSON job file, the job file of that ``name`` in the same folder. Cluster, library, retry,
timeout and notification settings are ignored.

A bundle job's ``notebook_path`` is relative to the file that defines the job, as the bundle
has it. A JSON job file's is looked up, in order: as an absolute path; relative to the parent
of the job file's folder; relative to the job file's folder; relative to the current
directory. ``.py`` is added when the path has no suffix, as Databricks paths have none.
"""
import datetime
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from mlops.errors import JobError
from mlops.local.bundle import JOB_ID_REFERENCE, Bundle, load_bundle
from mlops.local.notebook_source import shown_path

logger = logging.getLogger(__name__)

_REFERENCE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_STATIC_REFERENCES = ("job.id", "job.name", "job.run_id", "job.repair_count", "task.name", "task.run_id",
                      "job.start_time.iso_date", "job.start_time.iso_datetime", "job.start_time.timestamp")
_IGNORED_TASK_FIELDS = ("job_cluster_key", "new_cluster", "existing_cluster_id", "libraries",
                        "timeout_seconds", "max_retries", "min_retry_interval_millis", "retry_on_timeout",
                        "email_notifications",
                        "webhook_notifications", "notification_settings", "environment_key",
                        "health", "description", "disable_auto_optimization")


RUN_IF = ("ALL_SUCCESS", "ALL_DONE", "NONE_FAILED", "AT_LEAST_ONE_SUCCESS", "ALL_FAILED",
          "AT_LEAST_ONE_FAILED")
CONDITION_OPERATORS = ("EQUAL_TO", "NOT_EQUAL", "GREATER_THAN", "GREATER_THAN_OR_EQUAL", "LESS_THAN",
                       "LESS_THAN_OR_EQUAL")


@dataclass(frozen=True)
class TaskSpec:
    task_key: str
    notebook_path: Optional[Path]
    depends_on: tuple[str, ...]
    base_parameters: dict[str, str]
    # A condition task: (op, left, right); its outcome is "true" or "false".
    condition: Optional[tuple[str, str, str]] = None
    # Upstream condition task -> the outcome this task needs from it.
    outcomes: dict[str, str] = field(default_factory=dict)
    run_if: str = "ALL_SUCCESS"
    # A run_job_task: the key of the job it starts and the job parameters it passes.
    run_job: Optional[tuple[str, dict]] = None


@dataclass(frozen=True)
class JobSpec:
    """A validated job; ``tasks`` are in the order they run."""

    name: str
    # The file that defines the job.
    path: Path
    parameters: dict[str, str]
    tasks: tuple[TaskSpec, ...]
    max_concurrent_runs: int = 1
    # How a person starts this job again, e.g. to repair a run.
    run_command: str = ""
    # The job a run_job_task starts, by its key.
    other_job: Callable[[str], "JobSpec"] = field(default=None, compare=False, repr=False)

    def parameter_names(self) -> set[str]:
        names = set(self.parameters)
        for task in self.tasks:
            names.update(task.base_parameters)
        return names


def read_job_file(path) -> dict:
    """The job settings in a JSON job file, or in a ``jobs/get`` answer (settings under ``"settings"``)."""
    path = Path(path)
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise JobError(f"job file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise JobError(f"job file {path} is not valid JSON: {error}") from error
    if isinstance(job, dict) and "settings" in job and "tasks" not in job:
        job = job["settings"]
    if not isinstance(job, dict):
        raise JobError(f"job file {path} must hold a JSON object of job settings")
    return job


def start_time_values(start: datetime.datetime) -> dict:
    """The ``{{job.start_time.*}}`` dynamic values of a run that started at ``start``."""
    return {"job.start_time.iso_date": start.date().isoformat(),
            "job.start_time.iso_datetime": start.isoformat(),
            "job.start_time.timestamp": str(int(start.timestamp() * 1000))}


def load_job(job_file: Path) -> JobSpec:
    """Read and validate a JSON job file; JobError says what is wrong and where."""
    job_file = Path(job_file)
    folder = job_file.resolve().parent

    def other_job(name: str) -> JobSpec:
        return load_job(find_job_file(folder, name, job_file))

    return job_from_settings(read_job_file(job_file), job_file, other_job,
                             notebook_bases=[folder.parent, folder, Path.cwd()],
                             run_command=f"mlops job run {shown_path(job_file)}",
                             check_job=lambda name: find_job_file(folder, name, job_file))


def bundle_job(key: str, target: Optional[str] = None, root: Optional[Path] = None,
               variables: Optional[dict] = None, bundle: Optional[Bundle] = None) -> JobSpec:
    """Job ``key`` of the bundle at ``root`` (default: found from here), resolved for ``target``."""
    bundle = bundle or load_bundle(root, target, variables)
    settings = bundle.job_settings(key)
    source = bundle.source("jobs", key)
    return job_from_settings({"name": key, **settings}, source,
                             lambda other: bundle_job(other, bundle=bundle), notebook_bases=[source.parent],
                             run_command=f"mlops job run {key} --target {bundle.target}",
                             check_job=bundle.job_settings)


def job_from_settings(settings: dict, job_file: Path, other_job: Callable[[str], JobSpec],
                      notebook_bases: list, run_command: str, check_job: Callable[[str], Any]) -> JobSpec:
    """Validate job settings read from ``job_file``; JobError says what is wrong and where."""
    job_file = Path(job_file)
    name = settings.get("name") or job_file.stem
    parameters = _job_parameters(job_file, settings.get("parameters", []))
    raw_tasks = settings.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise JobError(f"job file {job_file} has no tasks")
    tasks = [_task(job_file, index, raw, notebook_bases) for index, raw in enumerate(raw_tasks, start=1)]
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
    limit = settings.get("max_concurrent_runs", 1)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise JobError(f"job file {job_file}: max_concurrent_runs must be a whole number >= 1, got {limit!r}")
    for task in ordered:
        if task.run_job:
            try:
                check_job(task.run_job[0])
            except JobError as error:
                raise JobError(f"job file {job_file}: task '{task.task_key}' starts a job that does not "
                               f"exist: {error}") from None
    return JobSpec(name=name, path=job_file, parameters=parameters, tasks=tuple(ordered),
                   max_concurrent_runs=limit, run_command=run_command, other_job=other_job)


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


def _task(job_file: Path, index: int, raw: Any, notebook_bases: list) -> TaskSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("task_key"), str) or not raw["task_key"]:
        raise JobError(f"job file {job_file}: task #{index} has no task_key")
    key = raw["task_key"]
    depends_on = raw.get("depends_on", [])
    if not isinstance(depends_on, list) or not all(
            isinstance(item, dict) and isinstance(item.get("task_key"), str) for item in depends_on):
        raise JobError(f"job file {job_file}: task '{key}' depends_on must be a list of "
                       "{\"task_key\": ...} objects")
    outcomes = {item["task_key"]: item["outcome"] for item in depends_on if "outcome" in item}
    if any(outcome not in ("true", "false") for outcome in outcomes.values()):
        raise JobError(f"job file {job_file}: task '{key}' depends_on outcome must be \"true\" or \"false\"")
    upstream = tuple(item["task_key"] for item in depends_on)
    run_if = raw.get("run_if", "ALL_SUCCESS")
    if run_if not in RUN_IF:
        raise JobError(f"job file {job_file}: task '{key}' run_if {run_if!r} is not one of "
                       f"{', '.join(RUN_IF)}")
    if "condition_task" in raw:
        return TaskSpec(task_key=key, notebook_path=None, depends_on=upstream, base_parameters={},
                        condition=_condition(job_file, key, raw["condition_task"]), outcomes=outcomes,
                        run_if=run_if)
    if "run_job_task" in raw:
        return TaskSpec(task_key=key, notebook_path=None, depends_on=upstream, base_parameters={},
                        outcomes=outcomes, run_if=run_if,
                        run_job=_run_job(job_file, key, raw["run_job_task"]))
    notebook_task = raw.get("notebook_task")
    if notebook_task is None:
        kinds = [name for name in raw if name.endswith("_task")] or ["task without notebook_task"]
        raise JobError(f"job file {job_file}: task '{key}' is a {kinds[0]}; "
                       "the local runtime runs only notebook_task, condition_task and run_job_task tasks")
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
    ignored = sorted(name for name in raw if name in _IGNORED_TASK_FIELDS)
    if ignored:
        logger.debug("task %s: ignoring %s locally", key, ", ".join(ignored))
    return TaskSpec(task_key=key, notebook_path=_resolve_notebook_path(job_file, key, declared_path,
                                                                       notebook_bases),
                    depends_on=upstream, base_parameters=dict(base_parameters), outcomes=outcomes,
                    run_if=run_if)


def _run_job(job_file: Path, key: str, raw: Any) -> tuple[str, dict]:
    """The key of the job a run_job_task starts, from its job id reference, and its job parameters."""
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    match = JOB_ID_REFERENCE.match(job_id) if isinstance(job_id, str) else None
    if match is None:
        raise JobError(f"job file {job_file}: task '{key}' run_job_task job_id must be the reference "
                       f"${{resources.jobs.<job key>.id}}, got {job_id!r}")
    parameters = raw.get("job_parameters", {})
    if not isinstance(parameters, dict) or not all(isinstance(value, str) for value in parameters.values()):
        raise JobError(f"job file {job_file}: task '{key}' run_job_task job_parameters must map names "
                       "to strings")
    return match.group(1), dict(parameters)


def find_job_file(folder: Path, job_name: str, referring: Path) -> Path:
    """The job file in ``folder`` whose ``name`` is ``job_name``."""
    names = {}
    for candidate in sorted(folder.glob("*.json")):
        try:
            settings = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(settings, dict) and isinstance(settings.get("tasks"), list):
            names[settings.get("name") or candidate.stem] = candidate
    if job_name not in names:
        raise JobError(f"job file {referring}: no job named '{job_name}' in {folder} "
                       f"(jobs there: {', '.join(sorted(names)) or 'none'})")
    return names[job_name]


def _condition(job_file: Path, key: str, raw: Any) -> tuple[str, str, str]:
    if not isinstance(raw, dict) or raw.get("op") not in CONDITION_OPERATORS or \
            not isinstance(raw.get("left"), str) or not isinstance(raw.get("right"), str):
        raise JobError(f"job file {job_file}: task '{key}' condition_task needs 'left' and 'right' strings "
                       f"and an 'op' among {', '.join(CONDITION_OPERATORS)}")
    return raw["op"], raw["left"], raw["right"]


def _resolve_notebook_path(job_file: Path, task_key: str, declared: str, notebook_bases: list) -> Path:
    given = Path(declared)
    bases = [None] if given.is_absolute() else notebook_bases
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
    values = [*task.base_parameters.values(), *job_parameters.values(), *(task.condition or ())[1:],
              *(task.run_job[1].values() if task.run_job else ())]
    for value in values:
        problem = reference_problem(value, job_parameters, keys)
        if problem:
            raise JobError(f"job file {job_file}: task '{task.task_key}' {problem}")


def reference_problem(value: str, job_parameters, keys) -> str:
    """Why a ``{{...}}`` reference in ``value`` cannot be resolved locally, or ''."""
    for reference in _REFERENCE.findall(value):
        if reference in _STATIC_REFERENCES:
            continue
        if reference.startswith("job.parameters."):
            name = reference[len("job.parameters."):]
            if name in job_parameters:
                continue
            return (f"refers to job parameter '{name}', which the job does not declare (job parameters: "
                    f"{', '.join(sorted(job_parameters)) or 'none'})")
        if reference.startswith("tasks.") and ".values." in reference:
            upstream = reference[len("tasks."):].split(".values.", 1)[0]
            if upstream in keys:
                continue
            return f"refers to task values of unknown task '{upstream}' in '{{{{{reference}}}}}'"
        return (f"uses '{{{{{reference}}}}}', which the local runtime does not know (supported: "
                f"{', '.join(_STATIC_REFERENCES)}, job.parameters.<name>, tasks.<task_key>.values.<key>)")
    return ""
