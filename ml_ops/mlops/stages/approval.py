"""Task ``request_approval``: tell the approvers which version waits for them, and why.

It runs only when the deploy task left a version ``pending_approval`` (a condition task of the
training job decides). On Databricks the task's ``email_notifications.on_start`` mails the
approvers a link to this run, whose output is the request: the version, the evidence the deploy
task recorded, and the command that approves it. The request is also a model history event.
"""
from mlops.config import TrainingConfig
from mlops.lifecycle.registry import APPROVAL_PENDING, APPROVAL_TAG, RegistryClient
from mlops.stages.promotion import DECISION_TAG
from mlops.stages.run import TaskRun


DEPLOY_TASK = "deploy"


def request_approval(run: TaskRun[TrainingConfig]) -> str:
    """The approval request for the version waiting; '' when none waits."""
    config = run.config
    registry = RegistryClient(config.registered_model_name, config.registry_uri)
    version = _waiting_version(run, registry)
    if version is None:
        return ""
    tags = registry.get_version(version).tags
    evidence = tags.get("promotion_rule") or tags.get(DECISION_TAG, "")
    if tags.get("promotion_rows"):
        evidence += f", on {tags['promotion_rows']} held-out rows"
    request = (f"model {config.registered_model_name} version {version} waits for approval: {evidence}. "
               f"Approve it with `mlops model approve {config.registered_model_name} {version} --by <you>`"
               + (f" --registry-uri {config.registry_uri}" if config.registry_uri else ""))
    registry.history.append("approval requested", version, f"job {run.job.job_name} run {run.job.job_run_id}")
    run.set_task_value("approval_request", request)
    run.annotate(model_version=version)
    return request


def _waiting_version(run: TaskRun[TrainingConfig], registry: RegistryClient):
    """The version the deploy task of this run left pending, else the newest pending version."""
    version = run.config.model_version or run.dbutils.jobs.taskValues.get(
        taskKey=DEPLOY_TASK, key="model_version", default="", debugValue="")
    if version:
        return str(version) if registry.get_version(version).tags.get(APPROVAL_TAG) == APPROVAL_PENDING \
            else None
    pending = [item.version for item in registry.list_versions()
               if (item.tags or {}).get(APPROVAL_TAG) == APPROVAL_PENDING]
    return str(pending[-1]) if pending else None
