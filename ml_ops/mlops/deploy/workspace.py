"""Deploy one environment to its Databricks workspace.

``deploy`` uploads both wheels to ``<wheel_root>/<version>/``, imports the orchestrator
notebooks (and optionally the Nutter test notebooks) under ``<workspace_root>/``, and creates
or resets every job of ``databricks_jobs/*.json`` rendered for the environment. Everything
that can be checked offline (wheels, environment, job files, notebook references) is checked
before the first request.

Credentials come from arguments or ``DATABRICKS_HOST`` / ``DATABRICKS_TOKEN``. The token is
never printed and never put in an exception message.
"""
import base64
import contextlib
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Optional

from mlops.deploy import jobspec
from mlops.errors import ConfigError, JobError
from mlops.observability.redaction import redact_text, register_secret
from mlops.platform.notebook_format import is_notebook

WHEEL_DISTRIBUTIONS = ("taxi_fares", "taxi_fares_mlops")
_WHEEL_NAME = re.compile(r"^(?P<distribution>[A-Za-z0-9_]+)-(?P<version>[^-]+)-py3-none-any\.whl$")
# Workspace folders under workspace_root; job files and Nutter tests refer to notebooks by these.
ORCHESTRATOR_FOLDER = "orchestrator"
NUTTER_FOLDER = "tests/nutter"
HOST_ENV = "DATABRICKS_HOST"
TOKEN_ENV = "DATABRICKS_TOKEN"


@dataclasses.dataclass
class DeployResult:
    """What one deploy did: remote paths written and jobs created or reset (name -> job id)."""

    env: str
    host: str
    version: str
    wheels: list = dataclasses.field(default_factory=list)
    notebooks: list = dataclasses.field(default_factory=list)
    created: dict = dataclasses.field(default_factory=dict)
    updated: dict = dataclasses.field(default_factory=dict)

    @property
    def job_ids(self) -> dict:
        return {**self.created, **self.updated}

    def summary(self) -> str:
        lines = [f"deployed environment {self.env} (wheels {self.version}) to {self.host}"]
        lines += [f"  uploaded wheel   {path}" for path in self.wheels]
        lines += [f"  imported notebook {path}" for path in self.notebooks]
        lines += [f"  created job      {name} (id {job_id})" for name, job_id in sorted(self.created.items())]
        lines += [f"  reset job        {name} (id {job_id})" for name, job_id in sorted(self.updated.items())]
        return "\n".join(lines)


def find_wheels(wheels_dir="dist") -> tuple:
    """(version, [wheel paths]) of the two project wheels; both must exist and share one version."""
    folder = Path(wheels_dir)
    found = {}
    for path in sorted(folder.glob("*.whl")):
        match = _WHEEL_NAME.match(path.name)
        if match and match["distribution"] in WHEEL_DISTRIBUTIONS:
            found.setdefault(match["distribution"], []).append((match["version"], path))
    missing = [name for name in WHEEL_DISTRIBUTIONS if name not in found]
    if missing:
        raise ConfigError(f"no {' or '.join(missing)} wheel in {folder}/: run `make wheels` "
                          f"(or `python setup.py wheels`) first")
    several = [name for name in WHEEL_DISTRIBUTIONS if len(found[name]) > 1]
    if several:
        raise ConfigError(f"more than one {', '.join(several)} wheel in {folder}/: run `make wheels` "
                          f"to rebuild one version, or remove the stale wheels")
    versions = {found[name][0][0] for name in WHEEL_DISTRIBUTIONS}
    if len(versions) != 1:
        raise ConfigError(f"the wheels in {folder}/ have different versions ({', '.join(sorted(versions))}); "
                          f"run `make wheels` to build both with one version")
    return versions.pop(), [found[name][0][1] for name in WHEEL_DISTRIBUTIONS]


def notebooks_in(folder) -> list:
    """Databricks source notebooks directly in ``folder``, sorted."""
    return sorted(path for path in Path(folder).glob("*.py") if is_notebook(path))


def _credentials(host: Optional[str], token: Optional[str]) -> tuple:
    host = (host or os.environ.get(HOST_ENV) or "").rstrip("/")
    token = token or os.environ.get(TOKEN_ENV) or ""
    if not host:
        raise ConfigError(f"no Databricks host: pass --host or set {HOST_ENV}")
    if not token:
        raise ConfigError(f"no Databricks token for {host}: set {TOKEN_ENV} "
                          f"(from a secret pipeline variable, never on the command line)")
    register_secret(token)
    return host, token


def connect(host: Optional[str] = None, token: Optional[str] = None):
    """A databricks-sdk WorkspaceClient that authenticates with a personal access token only."""
    from databricks.sdk import WorkspaceClient

    host, token = _credentials(host, token)
    try:
        return WorkspaceClient(host=host, token=token, auth_type="pat")
    except ValueError as error:
        raise ConfigError(f"cannot configure a Databricks client for {host}: {redact_text(error)}") from error


@contextlib.contextmanager
def _remote(host: str, action: str):
    """Turn a Databricks API error into our hierarchy, naming the host and the action."""
    from databricks.sdk.errors import DatabricksError, PermissionDenied, Unauthenticated

    try:
        yield
    except Unauthenticated as error:
        raise ConfigError(
            f"Databricks at {host} rejected the credentials (HTTP 401) while trying to {action}: "
            f"check that {TOKEN_ENV} holds a valid, unexpired token for this workspace") from error
    except PermissionDenied as error:
        raise ConfigError(
            f"Databricks at {host} denied permission (HTTP 403) to {action}: the token's principal "
            f"needs access to it ({redact_text(error)})") from error
    except DatabricksError as error:
        raise JobError(f"Databricks at {host} failed to {action}: {redact_text(error)}") from error


def _host_of(client) -> str:
    return client.config.host.rstrip("/")


def render_all(environment: dict, version: str, jobs_dir) -> dict:
    """Every job file rendered for ``environment`` and validated against the Jobs API: name -> settings."""
    rendered = {}
    for path in jobspec.job_files(jobs_dir):
        job = jobspec.render_job(jobspec.load_job(path), environment, wheel_version=version)
        settings = jobspec.validate_job_settings(job)
        if job["name"] in rendered:
            raise JobError(f"two job files define the job name '{job['name']}' (second: {path})")
        rendered[job["name"]] = settings
    if not rendered:
        raise ConfigError(f"no job files in {jobs_dir}/")
    return rendered


def _check_notebook_references(jobs: dict, workspace_notebooks: set):
    for name, settings in jobs.items():
        for task in settings.tasks or []:
            notebook = task.notebook_task
            if notebook and notebook.notebook_path.startswith("/") and \
                    notebook.notebook_path not in workspace_notebooks:
                raise JobError(f"job '{name}' task '{task.task_key}' runs notebook {notebook.notebook_path}, "
                               f"which is not among the notebooks being imported")


def deploy(env: str, host: Optional[str] = None, token: Optional[str] = None, wheels_dir="dist",
           jobs_dir=jobspec.DEFAULT_JOBS_DIR, notebooks_dir="orchestrator", tests_dir=None,
           client=None, out=None) -> DeployResult:
    """Upload wheels, import notebooks, create or reset jobs; print and return what was done."""
    out = out if out is not None else sys.stdout
    environment = jobspec.load_environment(env, jobs_dir)
    version, wheels = find_wheels(wheels_dir)
    root = environment["workspace_root"].rstrip("/")
    notebooks = [(path, f"{root}/{ORCHESTRATOR_FOLDER}/{path.stem}") for path in notebooks_in(notebooks_dir)]
    if not notebooks:
        raise ConfigError(f"no Databricks source notebooks in {notebooks_dir}/")
    if tests_dir is not None:
        tests = notebooks_in(tests_dir)
        if not tests:
            raise ConfigError(f"no Databricks source notebooks in {tests_dir}/")
        notebooks += [(path, f"{root}/{NUTTER_FOLDER}/{path.stem}") for path in tests]
    jobs = render_all(environment, version, jobs_dir)
    _check_notebook_references(jobs, {remote for _, remote in notebooks})

    client = client if client is not None else connect(host, token)
    result = DeployResult(env=env, host=_host_of(client), version=version)
    folder = jobspec.wheel_folder(environment, version)
    for wheel in wheels:
        result.wheels.append(_upload(client, wheel, f"{folder}/{wheel.name}", result.host))
    for path, remote in notebooks:
        _import_notebook(client, path, remote, result.host)
        result.notebooks.append(remote)
    for name, settings in jobs.items():
        job_id, created = _upsert_job(client, env, settings, result.host)
        (result.created if created else result.updated)[name] = job_id
    print(result.summary(), file=out)
    return result


def _upload(client, local: Path, remote: str, host: str) -> str:
    folder = remote.rsplit("/", 1)[0]
    with _remote(host, f"upload {local.name} to {remote}"):
        if remote.startswith("/Volumes/"):
            client.files.create_directory(folder)
            with local.open("rb") as contents:
                client.files.upload(remote, contents, overwrite=True)
        else:
            client.dbfs.mkdirs(folder)
            with local.open("rb") as contents:
                client.dbfs.upload(remote, contents, overwrite=True)
    return remote


def _import_notebook(client, local: Path, remote: str, host: str):
    from databricks.sdk.service.workspace import ImportFormat, Language

    content = base64.b64encode(local.read_bytes()).decode("ascii")
    with _remote(host, f"import notebook {remote}"):
        client.workspace.mkdirs(remote.rsplit("/", 1)[0])
        client.workspace.import_(path=remote, content=content, format=ImportFormat.SOURCE,
                                 language=Language.PYTHON, overwrite=True)


def find_job(client, env: str, name: str, host: str):
    """The id of the deployed job ``name`` of ``env`` (tag env), or None; several matches are an error."""
    with _remote(host, f"list jobs named {name}"):
        candidates = [job for job in client.jobs.list(name=name)
                      if job.settings and job.settings.name == name
                      and (job.settings.tags or {}).get("env", env) == env]
    if len(candidates) > 1:
        ids = ", ".join(str(job.job_id) for job in candidates)
        raise JobError(f"Databricks at {host} has {len(candidates)} jobs named '{name}' for environment "
                       f"{env} (ids {ids}); delete the extra ones so deploys know which to update")
    return candidates[0].job_id if candidates else None


def _upsert_job(client, env: str, settings, host: str) -> tuple:
    job_id = find_job(client, env, settings.name, host)
    if job_id is not None:
        with _remote(host, f"reset job {settings.name} (id {job_id})"):
            client.jobs.reset(job_id=job_id, new_settings=settings)
        return job_id, False
    # Only the fields the job file sets: the SDK would send empty lists for the others.
    fields = {name: getattr(settings, name) for name in settings.as_dict()}
    with _remote(host, f"create job {settings.name}"):
        return client.jobs.create(**fields).job_id, True
