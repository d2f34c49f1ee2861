"""Deploys are releases: dry runs, versioned folders, experiments that cannot collide with folders."""
import io
import json
import shutil

import pytest

from mlops.deploy import jobspec, workspace as deploy
from mlops.errors import ConfigError, JobError
from support.databricks_api import CLIENT_SECRET, FAKE_TOKEN

from .conftest import ENVIRONMENTS, JOBS_DIR, REPO_ROOT, WHEEL_VERSION
from .test_deploy import NOTEBOOKS_DIR, api_requests, release, run_deploy

NEXT_VERSION = "0.1.0+b43"


def dry_run(env, wheels_dir, jobs_dir=JOBS_DIR, **options):
    out = io.StringIO()
    assert deploy.deploy(env, wheels_dir=wheels_dir, jobs_dir=jobs_dir, notebooks_dir=NOTEBOOKS_DIR,
                         dry_run=True, out=out, **options) is None
    return out.getvalue()


def rebuild_wheels(wheels_dir, version):
    for wheel in wheels_dir.glob("*.whl"):
        wheel.rename(wheels_dir / wheel.name.replace(WHEEL_VERSION, version))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_dry_run_prints_every_call_of_the_real_deploy_and_sends_nothing(databricks_api, wheels_dir, env):
    printed = dry_run(env, wheels_dir, host=databricks_api.url)
    assert databricks_api.requests == []
    result, _ = run_deploy(databricks_api, wheels_dir, env=env)
    for path in result.wheels + result.notebooks + result.experiments:
        assert f" {path}" in printed
    for name in result.created:
        assert f"GET  jobs/list                     {name}" in printed
    assert f"release folder {release(env)}" in printed
    assert printed.rstrip().endswith("nothing was sent; run without --dry-run to deploy")


def test_dry_run_needs_no_workspace_and_never_shows_a_secret(wheels_dir, monkeypatch):
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", "5f3c1f0e-0000-4000-8000-00000000c1d0")
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("DATABRICKS_TOKEN", FAKE_TOKEN)
    printed = dry_run("prod", wheels_dir)
    assert "to (no host yet: pass --host, set DATABRICKS_HOST or name a --profile)" in printed
    for shown in ("DATABRICKS_CLIENT_ID,", "DATABRICKS_CLIENT_SECRET=[REDACTED]",
                  "DATABRICKS_TOKEN=[REDACTED]"):
        assert shown in printed
    assert CLIENT_SECRET not in printed and FAKE_TOKEN not in printed
    assert "schedule 0 0 5 * * ? UTC" in printed and "runtime 18.0.x-cpu-ml-scala2.13" in printed


def test_dry_run_reads_the_host_of_a_profile(wheels_dir, monkeypatch, tmp_path):
    config = tmp_path / "databrickscfg"
    config.write_text("[prod-sp]\nhost = https://adb-42.azuredatabricks.net/\n")
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(config))
    assert "to https://adb-42.azuredatabricks.net\n" in dry_run("prod", wheels_dir, profile="prod-sp")


def test_a_new_release_keeps_the_previous_one_and_moves_the_jobs(databricks_api, wheels_dir):
    first, _ = run_deploy(databricks_api, wheels_dir, env="prod")
    rebuild_wheels(wheels_dir, NEXT_VERSION)
    second, _ = run_deploy(databricks_api, wheels_dir, env="prod")
    new_release = release("prod").replace(WHEEL_VERSION, NEXT_VERSION)
    assert second.release == new_release and first.release == release("prod")
    assert all(path in databricks_api.notebooks for path in first.notebooks + second.notebooks)
    assert all(path in databricks_api.files for path in first.wheels + second.wheels)
    for job_id in second.updated.values():
        for task in databricks_api.jobs[job_id]["tasks"]:
            if "notebook_task" in task:
                assert task["notebook_task"]["notebook_path"].startswith(new_release + "/")


def test_a_deploy_that_fails_part_way_leaves_the_jobs_on_the_previous_release(databricks_api, wheels_dir):
    first, _ = run_deploy(databricks_api, wheels_dir, env="staging")
    before = json.dumps(databricks_api.jobs, sort_keys=True)
    rebuild_wheels(wheels_dir, NEXT_VERSION)
    databricks_api.fail_next(400, path_prefix="/api/2.0/workspace/import", message="disk full")
    with pytest.raises(JobError, match="failed to import notebook .*disk full"):
        run_deploy(databricks_api, wheels_dir, env="staging")
    assert json.dumps(databricks_api.jobs, sort_keys=True) == before
    assert all(path in databricks_api.notebooks for path in first.notebooks)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environment_creates_its_experiments_outside_the_releases(databricks_api, wheels_dir, env):
    result, _ = run_deploy(databricks_api, wheels_dir, env=env)
    parameters = jobspec.load_environment(env, JOBS_DIR)["parameters"]
    assert parameters["experiment_name"] in databricks_api.experiments
    assert sorted(result.experiments) == sorted(databricks_api.experiments)
    again, _ = run_deploy(databricks_api, wheels_dir, env=env)
    assert len(databricks_api.calls("/mlflow/experiments/create")) == len(result.experiments)


@pytest.mark.parametrize("experiment, clash", [
    ("/Shared/taxi_fares/dev", "a folder holding the deployed notebooks"),
    (release("dev") + "/orchestrator", "a folder holding the deployed notebooks"),
    (release("dev") + "/orchestrator/taxi_fares_train", "a deployed notebook"),
])
def test_an_experiment_at_a_folder_path_is_refused_before_any_request(databricks_api, wheels_dir, tmp_path,
                                                                      experiment, clash):
    jobs_dir = tmp_path / "jobs"
    shutil.copytree(JOBS_DIR, jobs_dir)
    dev_file = jobs_dir / "environments" / "dev.json"
    dev = json.loads(dev_file.read_text())
    dev["parameters"]["experiment_name"] = experiment
    dev_file.write_text(json.dumps(dev))
    with pytest.raises(ConfigError) as caught:
        run_deploy(databricks_api, wheels_dir, jobs_dir=jobs_dir)
    assert f"environment dev: experiment {experiment} is also {clash}; a workspace path cannot be both" \
        in str(caught.value)
    assert api_requests(databricks_api) == []


def test_the_workspace_refuses_an_experiment_at_a_folder_and_a_folder_at_an_experiment(databricks_api,
                                                                                       wheels_dir):
    databricks_api.directories.add("/Shared/taxi_fares")
    databricks_api.directories.add("/Shared/taxi_fares/dev")
    databricks_api.experiments["/Shared/taxi_fares/dev/releases"] = "9"
    with pytest.raises(JobError, match="releases exists and is not a directory"):
        run_deploy(databricks_api, wheels_dir)
    del databricks_api.experiments["/Shared/taxi_fares/dev/releases"]
    databricks_api.directories.add("/Shared/taxi_fares/dev/experiments/taxi_fares")
    with pytest.raises(JobError, match="failed to create experiment .*Node named .* already exists"):
        run_deploy(databricks_api, wheels_dir)


def test_deploy_with_nutter_tests_puts_them_in_the_release(databricks_api, wheels_dir):
    result, _ = run_deploy(databricks_api, wheels_dir, tests_dir=REPO_ROOT / "tests" / "nutter")
    assert any(path.startswith(f"{release('dev')}/tests/nutter/") for path in result.notebooks)
