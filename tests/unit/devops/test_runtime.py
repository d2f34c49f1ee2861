"""The jobs name one Databricks Runtime, and the local environment matches what it ships."""
from importlib import metadata

import pytest

from mlops.deploy import runtime
from mlops.local.bundle import load_bundle

from .conftest import REPO_ROOT, TARGETS


@pytest.mark.parametrize("target", TARGETS)
def test_every_job_of_every_target_runs_on_the_lts_ml_runtime(target):
    bundle = load_bundle(REPO_ROOT, target)
    versions = {job_key: {cluster["new_cluster"]["spark_version"] for cluster in job["job_clusters"]}
                for job_key, job in bundle.resources("jobs").items()}
    assert len(versions) == 5 and all(value == {runtime.SPARK_VERSION_KEY} for value in versions.values()), \
        versions


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
