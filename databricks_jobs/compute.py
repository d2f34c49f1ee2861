"""The serverless option of the bundle: with ``--var compute=serverless``, notebook tasks run on
serverless compute instead of the job clusters (their ``%pip`` cell installs the wheels).

A bundle Python mutator (``python.mutators`` in databricks.yml), applied by ``databricks bundle``
to every job. Tasks that install cluster libraries (the Nutter job) keep their cluster, as
serverless notebook tasks take no task libraries.
"""
from dataclasses import replace

from databricks.bundles.core import Bundle, Variable, job_mutator, variables
from databricks.bundles.jobs import Job

SERVERLESS = "serverless"


@variables
class Variables:
    compute: Variable[str]


@job_mutator
def serverless_notebook_tasks(bundle: Bundle, job: Job) -> Job:
    """``job`` without job clusters when the bundle's ``compute`` variable is ``serverless``."""
    if bundle.resolve_variable(Variables.compute) != SERVERLESS or any(task.libraries for task in job.tasks):
        return job
    tasks = [replace(task, job_cluster_key=None) for task in job.tasks]
    return replace(job, tasks=tasks, job_clusters=[])
