"""Trigger a deployed job of one environment, optionally waiting for its result."""
import dataclasses
import datetime
import sys
from typing import Optional

from mlops.deploy import jobspec
from mlops.deploy.auth import connect, host_of, remote_call
from mlops.deploy.workspace import find_job
from mlops.errors import ConfigError, JobError
from mlops.observability.redaction import looks_secret


@dataclasses.dataclass
class TriggerResult:
    job_name: str
    job_id: int
    run_id: int
    result_state: str = ""
    run_page_url: str = ""


def trigger(env: str, job_name: str, parameters: Optional[dict] = None, host: Optional[str] = None,
            profile: Optional[str] = None, wait: bool = False, timeout_minutes: int = 120,
            jobs_dir=jobspec.DEFAULT_JOBS_DIR, client=None, out=None) -> TriggerResult:
    """Run the deployed job ``job_name`` of ``env`` now, with parameter overrides.

    Names must be declared by the deployed job: job parameters when it has them, otherwise
    base parameters of every notebook task (notebook parameters reach every notebook task).
    """
    from databricks.sdk.service.jobs import RunResultState

    out = out if out is not None else sys.stdout
    parameters = dict(parameters or {})
    jobspec.load_environment(env, jobs_dir)
    client = client if client is not None else connect(host, profile)
    host = host_of(client)
    job_id = find_job(client, env, job_name, host)
    if job_id is None:
        raise JobError(f"Databricks at {host} has no job '{job_name}' for environment {env}; "
                       f"run `mlops deploy run --env {env}` first")
    with remote_call(host, f"read job {job_name} (id {job_id})"):
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
    with remote_call(host, f"run job {job_name} (id {job_id})"):
        waiter = client.jobs.run_now(job_id=job_id, **(arguments if parameters else {}))
    result = TriggerResult(job_name=job_name, job_id=job_id, run_id=waiter.run_id)
    print(f"started run {result.run_id} of job {job_name} (id {job_id}) on {host}", file=out)
    if not wait:
        return result
    from databricks.sdk.errors import OperationFailed

    try:
        with remote_call(host, f"wait for run {result.run_id} of job {job_name}"):
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
