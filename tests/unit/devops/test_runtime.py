"""The jobs name one Databricks Runtime, and the local environment matches what it ships."""
from importlib import metadata

import pytest

from mlops.deploy import jobspec, runtime

from .conftest import ENVIRONMENTS, JOBS_DIR, REPO_ROOT

JOB_FILES = jobspec.job_files(JOBS_DIR)


def spark_versions(settings):
    clusters = [cluster["new_cluster"] for cluster in settings.get("job_clusters", [])]
    return {cluster["spark_version"] for cluster in clusters}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_rendered_job_runs_on_the_lts_ml_runtime(env):
    environment = jobspec.load_environment(env, JOBS_DIR)
    for path in JOB_FILES:
        assert spark_versions(jobspec.load_job(path)) == {runtime.SPARK_VERSION_KEY}
        assert spark_versions(jobspec.render_job(jobspec.load_job(path), environment)) == \
            {runtime.SPARK_VERSION_KEY}


def test_the_runtime_is_an_lts_ml_runtime_for_cpu():
    major, minor, rest = runtime.SPARK_VERSION_KEY.split(".", 2)
    assert (int(major), minor) >= (18, "0") and rest.startswith("x-cpu-ml-")


@pytest.mark.parametrize("distribution", sorted(runtime.LIBRARIES))
def test_the_local_environment_has_the_runtime_s_version(distribution):
    installed = metadata.version(distribution)
    assert installed == runtime.LIBRARIES[distribution], \
        f"{distribution} {installed} locally, {runtime.LIBRARIES[distribution]} on the cluster"


@pytest.mark.parametrize("distribution", sorted(runtime.LIBRARIES))
def test_the_requirements_pin_the_runtime_s_version(distribution):
    requirements = (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
    pins = [line for line in requirements if line.split("[")[0].split("=")[0] == distribution]
    assert pins and pins[0].endswith(f"=={runtime.LIBRARIES[distribution]}")
