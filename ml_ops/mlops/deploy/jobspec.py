"""Job files and environments: load, render for one environment, validate against the Jobs API.

A job file (``databricks_jobs/<job>.json``) holds Jobs API 2.1 settings with the dev values.
An environment file (``databricks_jobs/environments/<env>.json``) holds what differs per
environment:

``name``            the environment's name, equal to the file name (``dev``, ``staging``, ``prod``)
``description``     free text (optional)
``parameters``      parameter values, applied to every job parameter (``parameters[].default``) and
                    notebook task ``base_parameters`` entry of the same name
``cluster``         ``new_cluster`` overrides for every job cluster
``workspace_root``  the workspace folder the repository's notebooks are imported under
``wheel_root``      where the wheels are uploaded, a ``/Volumes/...`` or ``dbfs:/...`` folder
``schedule``        optional: job name -> Jobs API ``schedule`` for that job
``compute``         optional: ``classic`` (default: the job clusters) or ``serverless`` (notebook
                    tasks on serverless compute; ``cluster`` is then not used)
``run_as``          optional: Jobs API ``run_as``, e.g. ``{"service_principal_name": "<application id>"}``
``email_notifications``, ``webhook_notifications``, ``notification_settings``, ``health``
                    optional: the Jobs API job fields of those names, set on every job
``approvers``       optional: e-mail addresses told, by the task ``request_approval``, that a
                    version waits for their approval; required when ``require_approval`` is true

Rendering never adds parameter names: Databricks passes every job and base parameter on
to the notebooks, and the notebooks reject names they do not declare.
"""
import copy
import datetime
import json
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from mlops.errors import ConfigError, JobError
from mlops.observability.redaction import looks_secret

DEFAULT_JOBS_DIR = "databricks_jobs"
ENVIRONMENTS_FOLDER = "environments"

REQUIRED_ENVIRONMENT_KEYS = ("name", "parameters", "cluster", "workspace_root", "wheel_root")
JOB_FIELDS_FROM_ENVIRONMENT = ("run_as", "email_notifications", "webhook_notifications",
                               "notification_settings", "health")
OPTIONAL_ENVIRONMENT_KEYS = ("description", "schedule", "compute", "approvers") + JOB_FIELDS_FROM_ENVIRONMENT
COMPUTE_KINDS = ("classic", "serverless")
# The task that tells approvers a version waits for them (see the training job file).
APPROVAL_TASK = "request_approval"
# Deploys put each release's notebooks under <workspace_root>/releases/<version>.
RELEASES_FOLDER = "releases"
# The deploy step derives these from wheel_root and the built version; an environment may not set them.
DERIVED_PARAMETERS = ("wheel_path", "wheel_version")
# Cluster sizes are either fixed or autoscaled; the Jobs API rejects a cluster with both.
_EXCLUSIVE_SIZING = {"num_workers": "autoscale", "autoscale": "num_workers"}


def read_job_file(path) -> dict:
    """The job settings in a job file, or in a ``jobs/get`` answer (settings under ``"settings"``).

    A missing file, bad JSON or a non-object is a JobError naming the file.
    """
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


def load_job(path) -> dict:
    """Read one job file that names its job."""
    job = read_job_file(path)
    if not isinstance(job.get("name"), str):
        raise JobError(f"job file {path} must hold a JSON object with a 'name'")
    return job


def job_files(jobs_dir=DEFAULT_JOBS_DIR) -> list:
    """Every job file of the repository, sorted by name."""
    return sorted(Path(jobs_dir).glob("*.json"))


def environment_names(jobs_dir=DEFAULT_JOBS_DIR) -> list:
    return sorted(path.stem for path in (Path(jobs_dir) / ENVIRONMENTS_FOLDER).glob("*.json"))


def load_environment(name: str, jobs_dir=DEFAULT_JOBS_DIR) -> dict:
    """Read and check ``<jobs_dir>/environments/<name>.json``."""
    available = environment_names(jobs_dir)
    if name not in available:
        raise ConfigError(
            f"unknown environment {name!r}; available environments are: "
            f"{', '.join(available) or '(none found in ' + str(Path(jobs_dir) / ENVIRONMENTS_FOLDER) + ')'}")
    path = Path(jobs_dir) / ENVIRONMENTS_FOLDER / f"{name}.json"
    try:
        environment = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"environment file {path} is not valid JSON: {error}") from error
    check_environment(environment, source=str(path))
    if environment["name"] != name:
        raise ConfigError(f"environment file {path} names itself {environment['name']!r}; "
                          f"it must be {name!r}, like the file")
    return environment


def check_environment(environment: Any, source: str = "environment") -> None:
    """Reject an environment with missing or unknown keys or malformed values."""
    if not isinstance(environment, dict):
        raise ConfigError(f"{source} must be a JSON object")
    missing = [key for key in REQUIRED_ENVIRONMENT_KEYS if key not in environment]
    if missing:
        raise ConfigError(f"{source} lacks {', '.join(missing)}; "
                          f"required keys are: {', '.join(REQUIRED_ENVIRONMENT_KEYS)}")
    valid = REQUIRED_ENVIRONMENT_KEYS + OPTIONAL_ENVIRONMENT_KEYS
    unknown = sorted(set(environment) - set(valid))
    if unknown:
        raise ConfigError(f"{source} has unknown key(s) {', '.join(unknown)}; "
                          f"valid keys are: {', '.join(valid)}")
    parameters = environment["parameters"]
    if not isinstance(parameters, dict):
        raise ConfigError(f"{source}: 'parameters' must be an object of name -> string value")
    for name, value in parameters.items():
        if name in DERIVED_PARAMETERS:
            raise ConfigError(f"{source}: parameter '{name}' is set by the deploy step from wheel_root "
                              f"and the wheel version; remove it from the environment")
        if not isinstance(value, str):
            raise ConfigError(f"{source}: parameter '{name}' must be a string, as Databricks passes "
                              f"base parameters, got {type(value).__name__}")
        if looks_secret(value):
            raise ConfigError(f"{source}: parameter '{name}' holds what looks like a secret; environment "
                              f"files name secret scopes and keys, never secret values")
    if not isinstance(environment["cluster"], dict):
        raise ConfigError(f"{source}: 'cluster' must be an object of new_cluster fields")
    root = environment["workspace_root"]
    if not isinstance(root, str) or not root.startswith("/") or root.rstrip("/") == "":
        raise ConfigError(f"{source}: 'workspace_root' must be an absolute workspace folder "
                          f"such as /Shared/taxi_fares/dev, got {root!r}")
    wheel_root = environment["wheel_root"]
    if not isinstance(wheel_root, str) or not (wheel_root.startswith("/Volumes/")
                                               or wheel_root.startswith("dbfs:/")):
        raise ConfigError(f"{source}: 'wheel_root' must be a /Volumes/... or dbfs:/... folder, "
                          f"got {wheel_root!r}")
    schedule = environment.get("schedule", {})
    if not isinstance(schedule, dict) or not all(isinstance(entry, dict) for entry in schedule.values()):
        raise ConfigError(f"{source}: 'schedule' must map job names to Jobs API schedule objects")
    if environment.get("compute", "classic") not in COMPUTE_KINDS:
        raise ConfigError(f"{source}: 'compute' must be one of {', '.join(COMPUTE_KINDS)}, "
                          f"got {environment['compute']!r}")
    if environment.get("compute") == "serverless" and not wheel_root.startswith("/Volumes/"):
        raise ConfigError(f"{source}: serverless compute installs wheels from a Unity Catalog volume, "
                          f"not DBFS: set 'wheel_root' to a /Volumes/... folder")
    approvers = environment.get("approvers", [])
    if not isinstance(approvers, list) or not all(isinstance(a, str) and "@" in a for a in approvers):
        raise ConfigError(f"{source}: 'approvers' must be a list of e-mail addresses, got {approvers!r}")
    if parameters.get("require_approval", "false").strip().lower() == "true" and not approvers:
        raise ConfigError(f"{source}: require_approval is true but 'approvers' names nobody; a version "
                          f"waiting for approval would wait unseen: list the approvers' e-mail addresses")


_START_TIME_REFERENCE = re.compile(r"\{\{\s*job\.start_time\.(iso_date|iso_datetime|timestamp)\s*\}\}")


def start_time_values(start: datetime.datetime) -> dict:
    """The ``{{job.start_time.*}}`` dynamic values of a run that started at ``start``."""
    return {"job.start_time.iso_date": start.date().isoformat(),
            "job.start_time.iso_datetime": start.isoformat(),
            "job.start_time.timestamp": str(int(start.timestamp() * 1000))}


def resolve_start_time(value: str, start: Optional[datetime.datetime] = None) -> str:
    """``value`` with its ``{{job.start_time.*}}`` references resolved, as for a run starting now."""
    values = start_time_values(start or datetime.datetime.now(datetime.timezone.utc))
    return _START_TIME_REFERENCE.sub(lambda match: values[f"job.start_time.{match.group(1)}"], value)


def wheel_folder(environment: dict, wheel_version: str) -> str:
    """Where the wheels of ``wheel_version`` are uploaded, as the upload API names it."""
    return f"{environment['wheel_root'].rstrip('/')}/{wheel_version}"


def release_folder(environment: dict, wheel_version: str) -> str:
    """The workspace folder holding the notebooks of the release ``wheel_version``."""
    return f"{environment['workspace_root'].rstrip('/')}/{RELEASES_FOLDER}/{wheel_version}"


def pip_path(remote: str) -> str:
    """The path ``%pip`` on a cluster reads: ``dbfs:/x`` is mounted at ``/dbfs/x``."""
    return "/dbfs/" + remote[len("dbfs:/"):] if remote.startswith("dbfs:/") else remote


def notebook_tasks(job: dict) -> Iterator[dict]:
    for task in job.get("tasks", []):
        if "notebook_task" in task:
            yield task


def declared_parameters(job: dict) -> Iterator[tuple]:
    """(name, value, where) for every job parameter and every notebook task base parameter."""
    for parameter in job.get("parameters", []):
        yield parameter.get("name"), parameter.get("default"), "job parameters"
    for task in notebook_tasks(job):
        for name, value in task["notebook_task"].get("base_parameters", {}).items():
            yield name, value, f"task '{task.get('task_key')}'"


def render_job(job: dict, environment: dict, wheel_version: Optional[str] = None,
               workspace_root: Optional[str] = None) -> dict:
    """The job's settings for one environment, as a new dict; ``job`` is left unchanged.

    Notebook paths resolve under the release folder of ``wheel_version``, or under
    ``workspace_root`` when one is given.
    """
    check_environment(environment)
    rendered = copy.deepcopy(job)
    if workspace_root:
        root = workspace_root.rstrip("/")
    elif wheel_version:
        root = release_folder(environment, wheel_version)
    else:
        root = environment["workspace_root"].rstrip("/")
    values = dict(environment["parameters"])
    if wheel_version:
        values.update(wheel_path=pip_path(wheel_folder(environment, wheel_version)),
                      wheel_version=wheel_version)
    for parameter in rendered.get("parameters", []):
        if parameter.get("name") in values:
            parameter["default"] = values[parameter["name"]]
    for task in notebook_tasks(rendered):
        notebook = task["notebook_task"]
        parameters = notebook.get("base_parameters", {})
        for name in parameters:
            if name in values:
                parameters[name] = values[name]
        if notebook.get("source", "WORKSPACE") == "WORKSPACE":
            notebook["notebook_path"] = _absolute_notebook_path(notebook["notebook_path"], root)
    if environment.get("compute") == "serverless":
        _use_serverless(rendered)
    for cluster in _clusters(rendered):
        _merge_cluster(cluster, environment["cluster"])
    rendered.setdefault("tags", {})["env"] = environment["name"]
    schedule = environment.get("schedule", {}).get(rendered["name"])
    if schedule:
        rendered["schedule"] = copy.deepcopy(schedule)
    for field in JOB_FIELDS_FROM_ENVIRONMENT:
        if field in environment:
            rendered[field] = copy.deepcopy(environment[field])
    for task in rendered.get("tasks", []):
        if task.get("task_key") == APPROVAL_TASK and environment.get("approvers"):
            task.setdefault("email_notifications", {})["on_start"] = list(environment["approvers"])
    _refuse_secrets(rendered)
    return rendered


def _use_serverless(job: dict) -> None:
    """Notebook tasks without a cluster run on serverless compute; their %pip installs the wheels."""
    job.pop("job_clusters", None)
    for task in job.get("tasks", []):
        for field in ("job_cluster_key", "new_cluster", "existing_cluster_id", "libraries"):
            task.pop(field, None)


def _absolute_notebook_path(path: str, root: str) -> str:
    if path.startswith("/"):
        return path
    relative = path.removesuffix(".py").removeprefix("./")
    return f"{root}/{relative}"


def _clusters(job: dict) -> Iterator[dict]:
    for job_cluster in job.get("job_clusters", []):
        if "new_cluster" in job_cluster:
            yield job_cluster["new_cluster"]
    for task in job.get("tasks", []):
        if "new_cluster" in task:
            yield task["new_cluster"]


def _merge_cluster(cluster: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cluster.get(key), dict):
            cluster[key] = {**cluster[key], **copy.deepcopy(value)}
        else:
            cluster[key] = copy.deepcopy(value)
        if key in _EXCLUSIVE_SIZING and _EXCLUSIVE_SIZING[key] not in overrides:
            cluster.pop(_EXCLUSIVE_SIZING[key], None)


def _refuse_secrets(job: dict) -> None:
    """Job settings are readable by anyone who can see the job: a secret must come from a secret scope."""
    for name, value, where in declared_parameters(job):
        if looks_secret(value):
            raise ConfigError(
                f"job '{job['name']}' {where}: parameter '{name}' holds what looks like a secret; "
                f"put it in a Databricks secret scope and pass the scope and key names instead")
    for cluster in _clusters(job):
        for field in ("spark_conf", "spark_env_vars"):
            for name, value in cluster.get(field, {}).items():
                if looks_secret(value):
                    raise ConfigError(
                        f"job '{job['name']}': cluster {field} '{name}' holds what looks like a secret; "
                        f"reference it as {{{{secrets/<scope>/<key>}}}} instead")


# How a job file names another job's id in a run_job_task (the Databricks Asset Bundles form).
JOB_ID_PLACEHOLDER = re.compile(r"^\$\{resources\.jobs\.([A-Za-z0-9_.-]+)\.id\}$")


def _run_job_tasks(job: dict) -> Iterator[dict]:
    for task in job.get("tasks", []):
        if isinstance(task, dict) and isinstance(task.get("run_job_task"), dict):
            yield task["run_job_task"]


def started_jobs(job: dict) -> set:
    """The names of the jobs ``job`` starts through run_job_task placeholders."""
    names = set()
    for run_job_task in _run_job_tasks(job):
        match = JOB_ID_PLACEHOLDER.match(str(run_job_task.get("job_id", "")))
        if match:
            names.add(match.group(1))
    return names


def with_job_ids(job: dict, job_ids: dict) -> dict:
    """A copy of ``job`` with each run_job_task placeholder replaced by that job's id."""
    job = copy.deepcopy(job)
    for run_job_task in _run_job_tasks(job):
        match = JOB_ID_PLACEHOLDER.match(str(run_job_task.get("job_id", "")))
        if match:
            if match.group(1) not in job_ids:
                raise JobError(f"job '{job.get('name', '?')}' starts job '{match.group(1)}', which is not "
                               f"deployed with it (jobs: {', '.join(sorted(job_ids)) or 'none'})")
            run_job_task["job_id"] = int(job_ids[match.group(1)])
    return job


def validate_job_settings(job: dict):
    """Parse ``job`` as databricks-sdk JobSettings; a field the SDK does not keep is a JobError.

    The SDK models every field the Jobs API accepts, so a field lost in the round trip is one
    the API would reject or ignore (usually a typo or a field at the wrong level).
    """
    from databricks.sdk.service.jobs import JobSettings

    if not isinstance(job, dict):
        raise JobError(f"job settings must be a JSON object, got {type(job).__name__}")
    try:
        settings = JobSettings.from_dict(job)
    except (AttributeError, TypeError, ValueError) as error:
        raise JobError(f"job '{job.get('name', '?')}' is malformed: a field holds the wrong kind of "
                       f"value ({type(error).__name__}: {error})") from error
    problems = list(_differences(job, settings.as_dict(), ""))
    if problems:
        raise JobError(f"job '{job.get('name', '?')}' does not match the Jobs API settings: "
                       f"{'; '.join(problems)}")
    return settings


def _differences(original, kept, path) -> Iterator[str]:
    if isinstance(original, dict):
        if not isinstance(kept, dict):
            yield f"field '{path}' must not be an object"
            return
        for key, value in original.items():
            child = f"{path}.{key}" if path else key
            if key not in kept:
                yield (f"field '{child}' is lost when parsed: it is not a Jobs API field there, "
                       f"or its value is not one the API allows")
            else:
                yield from _differences(value, kept[key], child)
    elif isinstance(original, list):
        if not isinstance(kept, list) or len(kept) != len(original):
            yield f"field '{path}' must not be a list"
            return
        for index, (value, kept_value) in enumerate(zip(original, kept)):
            yield from _differences(value, kept_value, f"{path}[{index}]")
    elif original != kept:
        yield f"field '{path}' has value {original!r}, which the Jobs API reads as {kept!r}"
