"""Environment files, job rendering and Jobs API validation."""
import copy
import json

import pytest

from mlops.deploy import jobspec
from mlops.errors import ConfigError, JobError

from .conftest import ENVIRONMENTS, JOBS_DIR, WHEEL_VERSION

JOB_FILES = sorted(JOBS_DIR.glob("*.json"))
# A storage connection string: the kind of value that must never sit in a job's settings.
ACCOUNT_KEY = "A" * 86 + "=="
CONNECTION_STRING = f"DefaultEndpointsProtocol=https;AccountName=taxifares;AccountKey={ACCOUNT_KEY}"


def environment(name):
    return jobspec.load_environment(name, JOBS_DIR)


def parameter_values(job):
    """name -> value of every job parameter and notebook task base parameter."""
    return {name: value for name, value, _ in jobspec.declared_parameters(job)}


def parameter_names(job):
    return sorted((name, where) for name, _, where in jobspec.declared_parameters(job))


def test_the_committed_job_files_are_found():
    assert JOB_FILES, f"no job files in {JOBS_DIR}"


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_environment_file_loads_and_names_its_environment(name):
    loaded = environment(name)
    assert loaded["name"] == name
    assert loaded["parameters"]["env"] == name
    assert loaded["workspace_root"] == f"/Shared/taxi_fares/{name}"


ROLLING_DATES = {"training_data_start_date": "{{job.start_time.iso_date}}-28d",
                 "training_data_end_date": "{{job.start_time.iso_date}}-1d",
                 "scoring_data_start_date": "{{job.start_time.iso_date}}-1d",
                 "scoring_data_end_date": "{{job.start_time.iso_date}}-1d"}


def test_environments_set_the_same_parameter_names_and_only_dev_keeps_fixed_dates():
    names = {name: set(environment(name)["parameters"]) for name in ENVIRONMENTS}
    assert names["staging"] == names["prod"]
    assert names["prod"] - names["dev"] == set(ROLLING_DATES)


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_staging_and_prod_train_and_score_on_rolling_dates(name):
    parameters = environment(name)["parameters"]
    assert {key: parameters[key] for key in ROLLING_DATES} == ROLLING_DATES


def test_environments_are_the_three_stages():
    assert jobspec.environment_names(JOBS_DIR) == sorted(ENVIRONMENTS)


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_staging_and_prod_register_in_unity_catalog(name):
    loaded = environment(name)
    catalog, schema, model = loaded["parameters"]["registered_model_name"].split(".")
    assert (catalog, schema, model) == (name, "taxi_fares", "taxi_fares_model")
    assert loaded["parameters"]["registry_uri"] == "databricks-uc"
    assert loaded["cluster"]["data_security_mode"] == "SINGLE_USER"
    assert loaded["parameters"]["experiment_name"] == f"/Shared/taxi_fares/{name}/experiments/taxi_fares"


def test_only_prod_requires_approval_and_names_its_approvers():
    assert {name: environment(name)["parameters"]["require_approval"] for name in ENVIRONMENTS} == \
        {"dev": "false", "staging": "false", "prod": "true"}
    assert environment("prod")["approvers"]


def test_scoring_runs_daily_in_staging_and_prod_and_prod_retrains_weekly():
    schedules = {name: environment(name).get("schedule", {}) for name in ENVIRONMENTS}
    assert schedules["dev"] == {}
    assert sorted(schedules["staging"]) == ["taxi_fares_batch_scoring"]
    assert sorted(schedules["prod"]) == ["taxi_fares_batch_scoring", "taxi_fares_training"]
    for name in ("staging", "prod"):
        daily = schedules[name]["taxi_fares_batch_scoring"]["quartz_cron_expression"].split()
        assert daily[3:] == ["*", "*", "?"] and daily[5] == "?"
    assert schedules["prod"]["taxi_fares_training"]["quartz_cron_expression"].endswith("MON")


@pytest.mark.parametrize("name", ["staging", "prod"])
def test_staging_and_prod_jobs_run_as_a_service_principal_and_tell_someone(name):
    for job_file in JOB_FILES:
        rendered = jobspec.render_job(jobspec.load_job(job_file), environment(name), WHEEL_VERSION)
        assert set(rendered["run_as"]) == {"service_principal_name"}
        assert rendered["email_notifications"]["on_failure"]
        assert rendered["health"]["rules"][0]["metric"] == "RUN_DURATION_SECONDS"
        jobspec.validate_job_settings(with_any_job_ids(rendered))


def test_a_version_waiting_for_approval_notifies_the_approvers():
    prod = environment("prod")
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    tasks = {task["task_key"]: task for task in jobspec.render_job(job, prod, WHEEL_VERSION)["tasks"]}
    condition = tasks["approval_needed"]["condition_task"]
    assert (condition["left"], condition["op"], condition["right"]) == \
        ("{{tasks.deploy.values.promotion_decision}}", "EQUAL_TO", "pending_approval")
    request = tasks[jobspec.APPROVAL_TASK]
    assert request["depends_on"] == [{"task_key": "approval_needed", "outcome": "true"}]
    assert request["email_notifications"]["on_start"] == prod["approvers"]


def test_requiring_approval_without_approvers_is_refused():
    prod = environment("prod")
    del prod["approvers"]
    with pytest.raises(ConfigError, match="require_approval is true but 'approvers' names nobody"):
        jobspec.check_environment(prod, source="prod")


def test_serverless_compute_drops_the_clusters_and_needs_a_volume_for_wheels():
    staging = {**environment("staging"), "compute": "serverless"}
    rendered = jobspec.render_job(jobspec.load_job(JOBS_DIR / "taxi_fares_training.json"), staging,
                                  WHEEL_VERSION)
    assert "job_clusters" not in rendered
    assert not any("job_cluster_key" in task for task in rendered["tasks"])
    jobspec.validate_job_settings(rendered)
    with pytest.raises(ConfigError, match="serverless compute installs wheels from a Unity Catalog volume"):
        jobspec.check_environment({**environment("dev"), "compute": "serverless"}, source="dev")
    with pytest.raises(ConfigError, match="'compute' must be one of classic, serverless, got 'gpu'"):
        jobspec.check_environment({**staging, "compute": "gpu"}, source="staging")


def test_unknown_environment_lists_the_available_ones():
    with pytest.raises(ConfigError) as caught:
        jobspec.load_environment("qa", JOBS_DIR)
    assert "unknown environment 'qa'" in str(caught.value)
    assert "dev, prod, staging" in str(caught.value)


def test_environment_whose_name_differs_from_its_file_is_rejected(tmp_path):
    (tmp_path / "environments").mkdir()
    document = {**environment("dev"), "name": "qa"}
    (tmp_path / "environments" / "dev.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match="names itself 'qa'; it must be 'dev'"):
        jobspec.load_environment("dev", tmp_path)


def test_environment_file_with_bad_json_names_the_file(tmp_path):
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "dev.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"environments/dev.json is not valid JSON"):
        jobspec.load_environment("dev", tmp_path)


def _broken(change):
    document = copy.deepcopy(environment("staging"))
    change(document)
    return document


BAD_ENVIRONMENTS = {
    "missing key": (lambda env: env.pop("wheel_root"), "lacks wheel_root; required keys are"),
    "unknown key": (lambda env: env.update(clusters={}), "unknown key(s) clusters; valid keys are"),
    "parameters not an object": (lambda env: env.update(parameters=[]), "'parameters' must be an object"),
    "number value": (lambda env: env["parameters"].update(validation_max_rmse=6.0),
                     "parameter 'validation_max_rmse' must be a string"),
    "derived parameter": (lambda env: env["parameters"].update(wheel_version="1"),
                          "parameter 'wheel_version' is set by the deploy step"),
    "relative workspace root": (lambda env: env.update(workspace_root="Shared/x"),
                                "'workspace_root' must be an absolute workspace folder"),
    "local wheel root": (lambda env: env.update(wheel_root="dist"),
                         "'wheel_root' must be a /Volumes/... or dbfs:/... folder, got 'dist'"),
    "cluster not an object": (lambda env: env.update(cluster="big"), "'cluster' must be an object"),
    "schedule not by job": (lambda env: env.update(schedule={"quartz_cron_expression": "0 0 3 * * ?"}),
                            "'schedule' must map job names to Jobs API schedule objects"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENVIRONMENTS))
def test_malformed_environment_is_rejected_with_a_reason(case):
    change, message = BAD_ENVIRONMENTS[case]
    with pytest.raises(ConfigError) as caught:
        jobspec.check_environment(_broken(change), source="staging.json")
    assert message in str(caught.value)
    assert str(caught.value).startswith("staging.json")


def test_secret_value_in_environment_names_the_parameter_but_not_the_value():
    broken = _broken(lambda env: env["parameters"].update(taxi_fares_raw_data=CONNECTION_STRING))
    with pytest.raises(ConfigError) as caught:
        jobspec.render_job(jobspec.load_job(JOB_FILES[0]), broken, WHEEL_VERSION)
    assert "parameter 'taxi_fares_raw_data' holds what looks like a secret" in str(caught.value)
    assert ACCOUNT_KEY not in str(caught.value)


def test_secret_value_in_a_job_file_fails_render_naming_the_parameter():
    job = jobspec.load_job(JOB_FILES[0])
    job["tasks"][0]["notebook_task"]["base_parameters"] = {"storage": CONNECTION_STRING}
    with pytest.raises(ConfigError) as caught:
        jobspec.render_job(job, environment("dev"))
    message = str(caught.value)
    task_key = job["tasks"][0]["task_key"]
    assert f"task '{task_key}': parameter 'storage' holds what looks like a secret" in message
    assert ACCOUNT_KEY not in message


def test_secret_in_cluster_environment_variables_fails_render_naming_the_variable():
    broken = _broken(lambda env: env["cluster"].update(spark_env_vars={"STORAGE": CONNECTION_STRING}))
    with pytest.raises(ConfigError) as caught:
        jobspec.render_job(jobspec.load_job(JOB_FILES[0]), broken)
    assert "cluster spark_env_vars 'STORAGE' holds what looks like a secret" in str(caught.value)
    assert ACCOUNT_KEY not in str(caught.value)


def test_secret_scope_and_key_names_are_not_secrets():
    rendered = jobspec.render_job(
        {"name": "j", "parameters": [{"name": "appinsights_secret_scope", "default": ""},
                                     {"name": "appinsights_secret_key", "default": ""}]},
        environment("prod"))
    assert parameter_values(rendered) == {"appinsights_secret_scope": "taxi-fares-prod",
                                          "appinsights_secret_key": "appinsights-connection-string"}


@pytest.mark.parametrize("job_file", JOB_FILES, ids=lambda path: path.name)
def test_dev_environment_equals_what_the_committed_job_files_hold(job_file):
    job = jobspec.load_job(job_file)
    rendered = jobspec.render_job(job, environment("dev"))
    assert parameter_values(rendered) == parameter_values(job)
    assert rendered["job_clusters"] == job["job_clusters"]
    assert rendered["tags"] == job["tags"]


@pytest.mark.parametrize("name", ENVIRONMENTS)
@pytest.mark.parametrize("job_file", JOB_FILES, ids=lambda path: path.name)
def test_render_adds_no_parameter_names_and_keeps_the_job_valid(job_file, name):
    job = jobspec.load_job(job_file)
    rendered = jobspec.render_job(job, environment(name), WHEEL_VERSION)
    assert parameter_names(rendered) == parameter_names(job)
    jobspec.validate_job_settings(with_any_job_ids(rendered))


def with_any_job_ids(job: dict) -> dict:
    """The job with every job it starts given an id, as a deploy does."""
    return jobspec.with_job_ids(job, {name: 1 for name in jobspec.started_jobs(job)})


def test_the_monitoring_job_round_trips_through_job_settings():
    from databricks.sdk.service.jobs import JobSettings

    job = jobspec.load_job(JOBS_DIR / "taxi_fares_monitoring.json")
    settings = jobspec.validate_job_settings(jobspec.with_job_ids(job, {"taxi_fares_training": 123}))

    assert JobSettings.from_dict(settings.as_dict()).as_dict() == settings.as_dict()
    tasks = {task.task_key: task for task in settings.tasks}
    assert tasks["retrain"].run_job_task.job_id == 123
    assert tasks["check"].condition_task.left == "{{tasks.monitor.values.retrain_required}}"
    assert settings.schedule.quartz_cron_expression == "0 0 6 * * ?"
    assert jobspec.started_jobs(job) == {"taxi_fares_training"}


def test_a_job_that_starts_a_job_not_deployed_with_it_is_refused():
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_monitoring.json")
    with pytest.raises(JobError, match="job 'taxi_fares_monitoring' starts job 'taxi_fares_training', "
                                       "which is not deployed with it \\(jobs: taxi_fares_batch_scoring\\)"):
        jobspec.with_job_ids(job, {"taxi_fares_batch_scoring": 5})


@pytest.mark.parametrize("name", ENVIRONMENTS)
def test_render_applies_the_environment_values(name):
    env = environment(name)
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    values = parameter_values(jobspec.render_job(job, env, WHEEL_VERSION))
    for parameter in ("env", "registered_model_name", "registry_uri", "experiment_name",
                      "taxi_fares_raw_data", "table_location"):
        assert values[parameter] == env["parameters"][parameter]


@pytest.mark.parametrize("name, wheel_path", [
    ("dev", f"/dbfs/FileStore/taxi_fares/wheels/dev/{WHEEL_VERSION}"),
    ("staging", f"/Volumes/staging/taxi_fares/wheels/{WHEEL_VERSION}"),
    ("prod", f"/Volumes/prod/taxi_fares/wheels/{WHEEL_VERSION}"),
])
def test_render_points_the_wheel_parameters_at_the_version_folder(name, wheel_path):
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    values = parameter_values(jobspec.render_job(job, environment(name), WHEEL_VERSION))
    assert values["wheel_path"] == wheel_path
    assert values["wheel_version"] == WHEEL_VERSION


def test_render_without_a_version_keeps_the_wheel_parameters():
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    values = parameter_values(jobspec.render_job(job, environment("staging")))
    assert (values["wheel_path"], values["wheel_version"]) == (
        parameter_values(job)["wheel_path"], parameter_values(job)["wheel_version"])


@pytest.mark.parametrize("job_file", JOB_FILES, ids=lambda path: path.name)
def test_render_makes_workspace_notebook_paths_absolute(job_file):
    rendered = jobspec.render_job(jobspec.load_job(job_file), environment("staging"))
    paths = [task["notebook_task"]["notebook_path"] for task in jobspec.notebook_tasks(rendered)]
    assert paths and all(path.startswith("/Shared/taxi_fares/staging/orchestrator/") for path in paths)


def test_render_workspace_root_argument_overrides_the_environment():
    job = {"name": "j",
           "tasks": [{"task_key": "t", "notebook_task": {"notebook_path": "./orchestrator/a.py"}}]}
    rendered = jobspec.render_job(job, environment("dev"), workspace_root="/Users/me/taxi/")
    assert rendered["tasks"][0]["notebook_task"]["notebook_path"] == "/Users/me/taxi/orchestrator/a"


def test_render_leaves_git_sourced_and_absolute_notebook_paths_alone():
    job = {"name": "j", "tasks": [
        {"task_key": "git", "notebook_task": {"notebook_path": "orchestrator/a", "source": "GIT"}},
        {"task_key": "abs", "notebook_task": {"notebook_path": "/Repos/x/orchestrator/b"}}]}
    rendered = jobspec.render_job(job, environment("dev"))
    assert [task["notebook_task"]["notebook_path"] for task in rendered["tasks"]] == \
        ["orchestrator/a", "/Repos/x/orchestrator/b"]


def test_render_overrides_task_base_parameters_only_where_declared():
    job = {"name": "j", "tasks": [
        {"task_key": "a", "notebook_task": {"notebook_path": "n", "base_parameters": {
            "env": "dev", "wheel_path": "dist", "seed": "1"}}},
        {"task_key": "b", "notebook_task": {"notebook_path": "n"}}]}
    rendered = jobspec.render_job(job, environment("prod"), WHEEL_VERSION)
    assert rendered["tasks"][0]["notebook_task"]["base_parameters"] == {
        "env": "prod", "wheel_path": f"/Volumes/prod/taxi_fares/wheels/{WHEEL_VERSION}", "seed": "1"}
    assert "base_parameters" not in rendered["tasks"][1]["notebook_task"]


def test_render_does_not_change_its_input():
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    before = copy.deepcopy(job)
    jobspec.render_job(job, environment("prod"), WHEEL_VERSION)
    assert job == before


def test_render_merges_the_cluster_and_swaps_fixed_size_for_autoscale():
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    rendered = jobspec.render_job(job, environment("prod"), WHEEL_VERSION)
    for job_cluster, original in zip(rendered["job_clusters"], job["job_clusters"]):
        cluster = job_cluster["new_cluster"]
        assert cluster["autoscale"] == {"min_workers": 2, "max_workers": 8}
        assert "num_workers" not in cluster
        assert cluster["node_type_id"] == "Standard_DS4_v2"
        assert cluster["data_security_mode"] == "SINGLE_USER"
        assert cluster.get("spark_conf") == original["new_cluster"].get("spark_conf")


def test_render_merges_nested_cluster_maps_key_by_key():
    job = {"name": "j", "job_clusters": [{"job_cluster_key": "c", "new_cluster": {
        "autoscale": {"min_workers": 1, "max_workers": 2}, "spark_conf": {"a": "1"}}}]}
    env = _broken(lambda env: env["cluster"].update(spark_conf={"b": "2"}))
    cluster = jobspec.render_job(job, env)["job_clusters"][0]["new_cluster"]
    assert cluster["spark_conf"] == {"a": "1", "b": "2"}
    assert cluster["num_workers"] == 2 and "autoscale" not in cluster


def test_render_tags_the_environment_and_adds_the_prod_schedule():
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    prod = jobspec.render_job(job, environment("prod"))
    assert prod["tags"]["env"] == "prod"
    assert prod["schedule"]["quartz_cron_expression"] == "0 0 3 ? * MON"
    assert "schedule" not in jobspec.render_job(job, environment("staging"))
    other = jobspec.render_job({**job, "name": "taxi_fares_scoring"}, environment("prod"))
    assert "schedule" not in other


@pytest.mark.parametrize("job_file", JOB_FILES, ids=lambda path: path.name)
def test_committed_job_file_round_trips_through_the_sdk_losing_nothing(job_file):
    job = with_any_job_ids(jobspec.load_job(job_file))
    settings = jobspec.validate_job_settings(job)
    assert settings.as_dict() == job


@pytest.mark.parametrize("change, path", [
    (lambda job: job.update(max_concurent_runs=1), "max_concurent_runs"),
    (lambda job: job["tasks"][0]["notebook_task"].update(base_paramters={}),
     "tasks[0].notebook_task.base_paramters"),
    (lambda job: job["job_clusters"][0]["new_cluster"].update(workers=2),
     "job_clusters[0].new_cluster.workers"),
    (lambda job: job["tasks"][0]["notebook_task"].update(source="LAPTOP"), "tasks[0].notebook_task.source"),
])
def test_unknown_field_fails_validation_naming_its_path(change, path):
    job = jobspec.load_job(JOBS_DIR / "taxi_fares_training.json")
    change(job)
    with pytest.raises(JobError) as caught:
        jobspec.validate_job_settings(job)
    assert f"field '{path}' is lost when parsed" in str(caught.value)
    assert "job 'taxi_fares_training'" in str(caught.value)


def test_wrongly_shaped_job_fails_validation():
    with pytest.raises(JobError, match="job 'j' is malformed: a field holds the wrong kind of value"):
        jobspec.validate_job_settings({"name": "j", "tasks": {"task_key": "t"}})
    with pytest.raises(JobError, match="job settings must be a JSON object, got list"):
        jobspec.validate_job_settings([])


def test_job_file_errors_name_the_file(tmp_path):
    with pytest.raises(JobError, match="missing.json does not exist"):
        jobspec.load_job(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(JobError, match="bad.json is not valid JSON"):
        jobspec.load_job(tmp_path / "bad.json")
    (tmp_path / "nameless.json").write_text("{}")
    with pytest.raises(JobError, match="nameless.json must hold a JSON object with a 'name'"):
        jobspec.load_job(tmp_path / "nameless.json")
