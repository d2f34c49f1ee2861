"""Deploy one environment to its Databricks workspace, as a plan of API calls.

A deploy is a release. Both wheels go to ``<wheel_root>/<version>/`` and the notebooks to
``<workspace_root>/releases/<version>/``; only when all of them are in place are the jobs
created or reset to run that release. A run in progress keeps the release it started with,
and a deploy that fails part-way leaves every job on a complete release. The experiments the
jobs log to are created when missing, at paths checked not to collide with a folder.

Everything that can be checked offline (wheels, environment, job files, notebook references,
workspace paths) is checked before the first request, and every job to reset is looked up
before the first upload. ``dry_run`` prints the plan and sends nothing.
"""
import base64
import dataclasses
import re
import sys
from pathlib import Path
from typing import Callable, Optional

from mlops.deploy import jobspec
from mlops.deploy.auth import connect, credential_sources, host_of, remote_call, resolve_host
from mlops.errors import ConfigError, JobError
from mlops.platform.notebook_format import is_notebook

WHEEL_DISTRIBUTIONS = ("taxi_fares", "taxi_fares_mlops")
_WHEEL_NAME = re.compile(r"^(?P<distribution>[A-Za-z0-9_]+)-(?P<version>[^-]+)-py3-none-any\.whl$")
# Folders of a release; job files and Nutter tests refer to notebooks by these.
ORCHESTRATOR_FOLDER = "orchestrator"
NUTTER_FOLDER = "tests/nutter"


@dataclasses.dataclass
class DeployResult:
    """What one deploy did: remote paths written and jobs created or reset (name -> job id)."""

    env: str
    host: str
    version: str
    release: str = ""
    wheels: list = dataclasses.field(default_factory=list)
    notebooks: list = dataclasses.field(default_factory=list)
    experiments: list = dataclasses.field(default_factory=list)
    created: dict = dataclasses.field(default_factory=dict)
    updated: dict = dataclasses.field(default_factory=dict)

    @property
    def job_ids(self) -> dict:
        return {**self.created, **self.updated}

    def summary(self) -> str:
        lines = [f"deployed environment {self.env} (wheels {self.version}) to {self.host}",
                 f"  release folder   {self.release}"]
        lines += [f"  uploaded wheel   {path}" for path in self.wheels]
        lines += [f"  imported notebook {path}" for path in self.notebooks]
        lines += [f"  experiment       {path}" for path in self.experiments]
        lines += [f"  created job      {name} (id {job_id})" for name, job_id in sorted(self.created.items())]
        lines += [f"  reset job        {name} (id {job_id})" for name, job_id in sorted(self.updated.items())]
        return "\n".join(lines)


@dataclasses.dataclass
class Step:
    """One API call of a deploy: shown by a dry run, performed by a real one."""

    request: str
    target: str
    detail: str
    perform: Callable = dataclasses.field(repr=False)

    def describe(self) -> str:
        return f"{self.request:<34} {self.target}" + (f"  ({self.detail})" if self.detail else "")


@dataclasses.dataclass
class Plan:
    env: str
    version: str
    release: str
    checks: list
    steps: list


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


def render_all(environment: dict, version: str, jobs_dir) -> dict:
    """Every job file rendered for ``environment`` and validated against the Jobs API: name -> job dict.

    A job that starts another (a run_job_task) comes after it, so that a deploy knows the id
    to write in place of the placeholder.
    """
    rendered = {}
    for path in jobspec.job_files(jobs_dir):
        job = jobspec.render_job(jobspec.load_job(path), environment, wheel_version=version)
        if job["name"] in rendered:
            raise JobError(f"two job files define the job name '{job['name']}' (second: {path})")
        rendered[job["name"]] = job
    if not rendered:
        raise ConfigError(f"no job files in {jobs_dir}/")
    for job in rendered.values():
        # Any id will do to check the settings; the real one is known only during the deploy.
        jobspec.validate_job_settings(jobspec.with_job_ids(job, dict.fromkeys(rendered, 0)))
    ordered = sorted(rendered, key=lambda name: (bool(jobspec.started_jobs(rendered[name])), name))
    return {name: rendered[name] for name in ordered}


def _settings(job: dict, job_ids: dict):
    return jobspec.validate_job_settings(jobspec.with_job_ids(job, job_ids))


def _check_notebook_references(jobs: dict, workspace_notebooks: set):
    for name, settings in jobs.items():
        for task in settings.tasks or []:
            notebook = task.notebook_task
            if notebook and notebook.notebook_path.startswith("/") and \
                    notebook.notebook_path not in workspace_notebooks:
                raise JobError(f"job '{name}' task '{task.task_key}' runs notebook {notebook.notebook_path}, "
                               f"which is not among the notebooks being imported")


def experiment_paths(environment: dict) -> list:
    """The MLflow experiments the jobs of ``environment`` log to."""
    from mlops.lifecycle.history import history_experiment

    parameters = environment["parameters"]
    names = [parameters.get("experiment_name", "")]
    if parameters.get("registered_model_name"):
        names.append(history_experiment(parameters["registered_model_name"]))
    return [name for name in names if name]


def check_paths_do_not_collide(env: str, experiments: list, notebooks: list) -> None:
    """A workspace path is a folder, a notebook or an experiment, never two of them."""
    folders = {parent for path in notebooks for parent in _parents(path)}
    for experiment in experiments:
        inside_notebook = any(experiment.startswith(path + "/") for path in notebooks)
        clash = "a folder holding the deployed notebooks" if experiment in folders else \
            "a deployed notebook" if experiment in notebooks else \
            "inside a deployed notebook's path" if inside_notebook else ""
        if clash:
            raise ConfigError(f"environment {env}: experiment {experiment} is also {clash}; a workspace "
                              f"path cannot be both: set experiment_name outside the release folders, "
                              f"e.g. <workspace_root>/experiments/<name>")


def _parents(path: str) -> list:
    parts = path.strip("/").split("/")
    return ["/" + "/".join(parts[:index]) for index in range(1, len(parts))]


def plan_deploy(env: str, wheels_dir="dist", jobs_dir=jobspec.DEFAULT_JOBS_DIR, notebooks_dir="orchestrator",
                tests_dir=None) -> Plan:
    """Check everything offline and list the API calls a deploy of ``env`` makes, in order."""
    environment = jobspec.load_environment(env, jobs_dir)
    version, wheels = find_wheels(wheels_dir)
    release = jobspec.release_folder(environment, version)
    notebooks = [(path, f"{release}/{ORCHESTRATOR_FOLDER}/{path.stem}")
                 for path in notebooks_in(notebooks_dir)]
    if not notebooks:
        raise ConfigError(f"no Databricks source notebooks in {notebooks_dir}/")
    if tests_dir is not None:
        tests = notebooks_in(tests_dir)
        if not tests:
            raise ConfigError(f"no Databricks source notebooks in {tests_dir}/")
        notebooks += [(path, f"{release}/{NUTTER_FOLDER}/{path.stem}") for path in tests]
    jobs = render_all(environment, version, jobs_dir)
    _check_notebook_references({name: _settings(job, dict.fromkeys(jobs, 0)) for name, job in jobs.items()},
                               {remote for _, remote in notebooks})
    experiments = experiment_paths(environment)
    check_paths_do_not_collide(env, experiments, [remote for _, remote in notebooks])

    checks = [Step("GET  jobs/list", name, f"must be absent or tagged env={env}",
                   lambda client, host, result, name=name: find_job(client, env, name, host))
              for name in jobs]
    steps = []
    folder = jobspec.wheel_folder(environment, version)
    for wheel in wheels:
        steps.append(_upload_step(wheel, f"{folder}/{wheel.name}"))
    for remote_folder in sorted({remote.rsplit("/", 1)[0] for _, remote in notebooks}):
        steps.append(Step("POST workspace/mkdirs", remote_folder, "",
                          lambda client, host, result, path=remote_folder: _mkdirs(client, path, host)))
    for path, remote in notebooks:
        steps.append(Step("POST workspace/import", remote, f"from {path.name}, overwrite",
                          lambda client, host, result, path=path, remote=remote:
                          _import_notebook(client, path, remote, host, result)))
    for experiment in experiments:
        steps.append(Step("POST mlflow/experiments/create", experiment, "when missing",
                          lambda client, host, result, name=experiment: _ensure_experiment(client, name, host,
                                                                                           result)))
    for name, job in jobs.items():
        preview = _settings(job, dict.fromkeys(jobs, 0))
        detail = _job_detail(preview, jobspec.started_jobs(job))
        steps.append(Step("POST jobs/reset or jobs/create", name, detail,
                          lambda client, host, result, job=job: _upsert_job(
                              client, env, _settings(job, result.job_ids), host, result)))
    return Plan(env=env, version=version, release=release, checks=checks, steps=steps)


def _job_detail(settings, started_jobs=()) -> str:
    clusters = {cluster.new_cluster.spark_version for cluster in settings.job_clusters or []
                if cluster.new_cluster}
    parts = [f"{len(settings.tasks or [])} tasks",
             f"runtime {', '.join(sorted(clusters))}" if clusters else "serverless"]
    if settings.schedule:
        parts.append(f"schedule {settings.schedule.quartz_cron_expression} {settings.schedule.timezone_id}")
    if settings.run_as:
        parts.append(f"run as {settings.run_as.service_principal_name or settings.run_as.user_name}")
    if settings.email_notifications and settings.email_notifications.on_failure:
        parts.append(f"failures mailed to {', '.join(settings.email_notifications.on_failure)}")
    if started_jobs:
        parts.append(f"starts job {', '.join(sorted(started_jobs))} by the id this deploy gives it")
    return "; ".join(parts)


def describe_plan(plan: Plan, host: str) -> str:
    """The plan as text: every API call with its target; no secret is ever part of a plan."""
    sources = credential_sources()
    lines = [f"dry run: deploy environment {plan.env} (wheels {plan.version}) to "
             f"{host or '(no host yet: pass --host, set DATABRICKS_HOST or name a --profile)'}",
             f"  release folder {plan.release}",
             "  authentication: databricks-sdk unified auth"
             + (f", from {', '.join(sources)}" if sources else ", from a profile or the Azure CLI"),
             "  first, looking up the jobs to reset:"]
    lines += [f"    {step.describe()}" for step in plan.checks]
    lines += ["  then, in order:"]
    lines += [f"    {number:>2}. {step.describe()}" for number, step in enumerate(plan.steps, start=1)]
    lines.append("nothing was sent; run without --dry-run to deploy")
    return "\n".join(lines)


def deploy(env: str, host: Optional[str] = None, profile: Optional[str] = None, wheels_dir="dist",
           jobs_dir=jobspec.DEFAULT_JOBS_DIR, notebooks_dir="orchestrator", tests_dir=None,
           dry_run: bool = False, client=None, out=None) -> Optional[DeployResult]:
    """Upload a release and point the jobs at it; with ``dry_run``, print the plan instead."""
    out = out if out is not None else sys.stdout
    plan = plan_deploy(env, wheels_dir, jobs_dir, notebooks_dir, tests_dir)
    if dry_run:
        print(describe_plan(plan, resolve_host(host, profile)), file=out)
        return None
    client = client if client is not None else connect(host, profile)
    result = DeployResult(env=env, host=host_of(client), version=plan.version, release=plan.release)
    for step in plan.checks:
        step.perform(client, result.host, result)
    for number, step in enumerate(plan.steps, start=1):
        print(f"[{number}/{len(plan.steps)}] {step.request} {step.target}", file=out, flush=True)
        step.perform(client, result.host, result)
    print(result.summary(), file=out)
    return result


def _upload_step(local: Path, remote: str) -> Step:
    volume = remote.startswith("/Volumes/")
    request = "PUT  fs/files" if volume else "POST dbfs/create+add-block+close"
    size = f"{local.stat().st_size / 1024:.0f} KiB"
    return Step(request, remote, size,
                lambda client, host, result: _upload(client, local, remote, host, result))


def _upload(client, local: Path, remote: str, host: str, result: DeployResult):
    folder = remote.rsplit("/", 1)[0]
    with remote_call(host, f"upload {local.name} to {remote}"):
        if remote.startswith("/Volumes/"):
            client.files.create_directory(folder)
            with local.open("rb") as contents:
                client.files.upload(remote, contents, overwrite=True)
        else:
            client.dbfs.mkdirs(folder)
            with local.open("rb") as contents:
                client.dbfs.upload(remote, contents, overwrite=True)
    result.wheels.append(remote)


def _mkdirs(client, path: str, host: str):
    with remote_call(host, f"create workspace folder {path}"):
        client.workspace.mkdirs(path)


def _import_notebook(client, local: Path, remote: str, host: str, result: DeployResult):
    from databricks.sdk.service.workspace import ImportFormat, Language

    content = base64.b64encode(local.read_bytes()).decode("ascii")
    with remote_call(host, f"import notebook {remote}"):
        client.workspace.import_(path=remote, content=content, format=ImportFormat.SOURCE,
                                 language=Language.PYTHON, overwrite=True)
    result.notebooks.append(remote)


def _ensure_experiment(client, name: str, host: str, result: DeployResult):
    from databricks.sdk.errors import NotFound

    with remote_call(host, f"create experiment {name}"):
        try:
            client.experiments.get_by_name(name)
        except NotFound:
            client.workspace.mkdirs(name.rsplit("/", 1)[0] or "/")
            client.experiments.create_experiment(name)
    result.experiments.append(name)


def find_job(client, env: str, name: str, host: str):
    """The id of the deployed job ``name`` of ``env``, or None.

    A job of that name tagged for another environment, or not tagged at all, is someone
    else's: it is an error, never a job to reset. So is more than one job of ``env``.
    """
    with remote_call(host, f"list jobs named {name}"):
        named = [job for job in client.jobs.list(name=name) if job.settings and job.settings.name == name]
    foreign = [job for job in named if (job.settings.tags or {}).get("env") != env]
    if foreign:
        described = ", ".join(f"id {job.job_id} ({_env_tag(job)})" for job in foreign)
        raise JobError(f"Databricks at {host} already has a job named '{name}' that is not environment "
                       f"{env}'s: {described}; deploy never touches it. Rename or delete it, or deploy "
                       f"each environment to its own workspace")
    if len(named) > 1:
        ids = ", ".join(str(job.job_id) for job in named)
        raise JobError(f"Databricks at {host} has {len(named)} jobs named '{name}' for environment "
                       f"{env} (ids {ids}); delete the extra ones so deploys know which to update")
    return named[0].job_id if named else None


def _env_tag(job) -> str:
    tag = (job.settings.tags or {}).get("env")
    return f"tagged env={tag}" if tag else "no env tag"


def _upsert_job(client, env: str, settings, host: str, result: DeployResult):
    job_id = find_job(client, env, settings.name, host)
    if job_id is not None:
        with remote_call(host, f"reset job {settings.name} (id {job_id})"):
            client.jobs.reset(job_id=job_id, new_settings=settings)
        result.updated[settings.name] = job_id
        return
    # Only the fields the job file sets: the SDK would send empty lists for the others.
    fields = {name: getattr(settings, name) for name in settings.as_dict()}
    with remote_call(host, f"create job {settings.name}"):
        result.created[settings.name] = client.jobs.create(**fields).job_id
