"""Deploy one environment to its Databricks workspace, and trigger its jobs.

``deploy`` uploads both wheels to ``<wheel_root>/<version>/``, imports the orchestrator
notebooks (and optionally the Nutter test notebooks) under ``<workspace_root>/``, and creates
or resets every job of ``databricks_jobs/*.json`` rendered for the environment. Everything
that can be checked offline (wheels, environment, job files, notebook references) is checked
before the first request.

Credentials come from arguments or ``DATABRICKS_HOST`` / ``DATABRICKS_TOKEN``. The token is
never printed and never put in an exception message.
"""
import argparse
import base64
import contextlib
import dataclasses
import datetime
import json
import os
import re
import sys
from pathlib import Path
from typing import Optional

from mlops import jobspec
from mlops.errors import ConfigError, JobError
from mlops.secrets import looks_secret, redact_text, register_secret

WHEEL_DISTRIBUTIONS = ("taxi_fares", "taxi_fares_mlops")
_WHEEL_NAME = re.compile(r"^(?P<distribution>[A-Za-z0-9_]+)-(?P<version>[^-]+)-py3-none-any\.whl$")
NOTEBOOK_HEADER = "# Databricks notebook source"
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


@dataclasses.dataclass
class TriggerResult:
    job_name: str
    job_id: int
    run_id: int
    result_state: str = ""
    run_page_url: str = ""


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


def is_notebook(path: Path) -> bool:
    with path.open() as handle:
        return handle.readline().rstrip("\r\n") == NOTEBOOK_HEADER


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


def parse_assignments(pairs) -> dict:
    """``["a=1", "b=x=y"]`` -> ``{"a": "1", "b": "x=y"}``; anything without ``=`` is a ConfigError."""
    parameters = {}
    for pair in pairs or []:
        name, separator, value = pair.partition("=")
        if not separator or not name.strip():
            raise ConfigError(f"parameter {pair!r} must be written name=value")
        parameters[name.strip()] = value
    return parameters


def trigger(env: str, job_name: str, parameters: Optional[dict] = None, host: Optional[str] = None,
            token: Optional[str] = None, wait: bool = False, timeout_minutes: int = 120,
            jobs_dir=jobspec.DEFAULT_JOBS_DIR, client=None, out=None) -> TriggerResult:
    """Run the deployed job ``job_name`` of ``env`` now, with parameter overrides.

    Names must be declared by the deployed job: job parameters when it has them, otherwise
    base parameters of every notebook task (notebook parameters reach every notebook task).
    """
    from databricks.sdk.service.jobs import RunResultState

    out = out if out is not None else sys.stdout
    parameters = dict(parameters or {})
    jobspec.load_environment(env, jobs_dir)
    client = client if client is not None else connect(host, token)
    host = _host_of(client)
    job_id = find_job(client, env, job_name, host)
    if job_id is None:
        raise JobError(f"Databricks at {host} has no job '{job_name}' for environment {env}; "
                       f"run `mlops deploy run --env {env}` first")
    with _remote(host, f"read job {job_name} (id {job_id})"):
        settings = client.jobs.get(job_id=job_id).settings
    if settings.parameters:
        declared = {parameter.name for parameter in settings.parameters}
        arguments = {"job_parameters": parameters}
    else:
        task_names = [set((task.notebook_task.base_parameters or {}))
                      for task in settings.tasks or [] if task.notebook_task]
        declared = set.intersection(*task_names) if task_names else set()
        arguments = {"notebook_params": parameters}
    unknown = sorted(set(parameters) - declared)
    if unknown:
        raise ConfigError(f"job '{job_name}' does not declare parameter(s) {', '.join(unknown)}; "
                          f"valid names are: {', '.join(sorted(declared)) or '(none)'}")
    secret_looking = sorted(name for name, value in parameters.items() if looks_secret(value))
    if secret_looking:
        raise ConfigError(f"parameter(s) {', '.join(secret_looking)} hold what looks like a secret; "
                          f"pass secret scope and key names instead")
    with _remote(host, f"run job {job_name} (id {job_id})"):
        waiter = client.jobs.run_now(job_id=job_id, **(arguments if parameters else {}))
    result = TriggerResult(job_name=job_name, job_id=job_id, run_id=waiter.run_id)
    print(f"started run {result.run_id} of job {job_name} (id {job_id}) on {host}", file=out)
    if not wait:
        return result
    from databricks.sdk.errors import OperationFailed

    try:
        with _remote(host, f"wait for run {result.run_id} of job {job_name}"):
            run = waiter.result(timeout=datetime.timedelta(minutes=timeout_minutes))
    except TimeoutError as error:
        raise JobError(f"run {result.run_id} of job {job_name} on {host} did not finish within "
                       f"{timeout_minutes} minutes; it goes on running: follow it in the Jobs UI") from error
    except OperationFailed as error:
        raise JobError(f"run {result.run_id} of job {job_name} on {host} failed: {error}") from error
    state = run.state.result_state if run.state else None
    result.result_state = state.value if state else ""
    result.run_page_url = run.run_page_url or ""
    print(f"run {result.run_id} of job {job_name} ended {result.result_state or 'without a result'}"
          f"{': ' + result.run_page_url if result.run_page_url else ''}", file=out)
    if state != RunResultState.SUCCESS:
        message = run.state.state_message if run.state and run.state.state_message else "no message"
        raise JobError(f"run {result.run_id} of job {job_name} on {host} ended "
                       f"{result.result_state or 'without a result'}: {message}")
    return result


# ---------------------------------------------------------------- command line

def _render_command(args):
    environment = jobspec.load_environment(args.env, args.jobs_dir)
    version = args.wheel_version
    if version is None and args.wheels_dir is not None:
        version, _ = find_wheels(args.wheels_dir)
    job = jobspec.render_job(jobspec.load_job(args.job_file), environment, wheel_version=version,
                             workspace_root=args.workspace_root)
    jobspec.validate_job_settings(job)
    if args.parameters_only:
        document = {name: value for name, value, _ in jobspec.declared_parameters(job)}
    else:
        document = job
    text = json.dumps(document, indent=None if args.parameters_only else 2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _run_command(args):
    deploy(args.env, host=args.host, wheels_dir=args.wheels_dir, jobs_dir=args.jobs_dir,
           notebooks_dir=args.notebooks_dir, tests_dir=args.tests_dir)
    return 0


def _trigger_command(args):
    trigger(args.env, args.job, parse_assignments(args.parameter), host=args.host, wait=args.wait,
            timeout_minutes=args.timeout_minutes, jobs_dir=args.jobs_dir)
    return 0


def register_cli(subparsers):
    """Add ``mlops deploy render|run|trigger`` to the ``mlops`` command line."""
    parser = subparsers.add_parser("deploy", help="render job files, deploy to Databricks, trigger jobs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="deploy_command", required=True)

    render = commands.add_parser("render", help="print a job file rendered for an environment")
    render.add_argument("job_file", help="a job file, e.g. databricks_jobs/taxi_fares_training.json")
    render.add_argument("--env", required=True, help="environment name (a file in <jobs-dir>/environments/)")
    render.add_argument("--wheel-version", help="the wheel version the job installs")
    render.add_argument("--wheels-dir", help="read the wheel version from the wheels in this folder")
    render.add_argument("--workspace-root", help="override the environment's workspace_root")
    render.add_argument("--jobs-dir", default=jobspec.DEFAULT_JOBS_DIR)
    render.add_argument("--parameters-only", action="store_true",
                        help="print only the job's parameters as one JSON object of name -> value")
    render.add_argument("--output", help="write to this file instead of standard output")
    render.set_defaults(func=_render_command)

    run = commands.add_parser("run", help="upload wheels, import notebooks, create or reset jobs")
    _add_connection_arguments(run)
    run.add_argument("--wheels-dir", default="dist")
    run.add_argument("--jobs-dir", default=jobspec.DEFAULT_JOBS_DIR)
    run.add_argument("--notebooks-dir", default="orchestrator")
    run.add_argument("--tests-dir", help=f"also import these Nutter test notebooks to "
                                         f"<workspace_root>/{NUTTER_FOLDER}/")
    run.set_defaults(func=_run_command)

    start = commands.add_parser("trigger", help="run a deployed job now")
    _add_connection_arguments(start)
    start.add_argument("--job", required=True, help="job name, e.g. taxi_fares_training")
    start.add_argument("-p", "--parameter", action="append", metavar="NAME=VALUE",
                       help="parameter override; repeat for more")
    start.add_argument("--wait", action="store_true", help="wait for the run and fail unless it succeeds")
    start.add_argument("--timeout-minutes", type=int, default=120)
    start.add_argument("--jobs-dir", default=jobspec.DEFAULT_JOBS_DIR)
    start.set_defaults(func=_trigger_command)


def _add_connection_arguments(parser):
    parser.add_argument("--env", required=True,
                        help="environment name (a file in databricks_jobs/environments/)")
    parser.add_argument("--host", help=f"workspace URL; default ${HOST_ENV}. The token is read from "
                                       f"${TOKEN_ENV} only, so it never appears in a command line")
