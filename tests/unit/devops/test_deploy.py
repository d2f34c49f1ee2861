"""Deploy and trigger through the real databricks-sdk client against a loopback Databricks API."""
import base64
import io
import json
import os
import shutil
import traceback
from unittest import mock

import pytest

from mlops.config import parse_assignments
from mlops.deploy import auth, jobspec, workspace as deploy
from mlops.deploy.trigger import trigger
from mlops.errors import ConfigError, JobError
from support.databricks_api import FAKE_TOKEN

from .conftest import JOBS_DIR, REPO_ROOT, WHEEL_VERSION

NOTEBOOKS_DIR = REPO_ROOT / "orchestrator"
NUTTER_DIR = REPO_ROOT / "tests" / "nutter"
JOB_NAMES = sorted(jobspec.load_job(path)["name"] for path in jobspec.job_files(JOBS_DIR))
# Looks like a real personal access token, so redaction and leak checks are meaningful.
WRONG_TOKEN = "dapi" + "fedcba9876543210" * 2


def release(env):
    return f"/Shared/taxi_fares/{env}/releases/{WHEEL_VERSION}"


def token_client(api, token=FAKE_TOKEN):
    """A client that authenticates with ``token``, found by unified auth in the environment."""
    with mock.patch.dict(os.environ, {"DATABRICKS_TOKEN": token}):
        return auth.connect(api.url)


def api_requests(api):
    """Requests to the REST API; the SDK's host metadata probe is not one."""
    return [request for request in api.requests if request.path.startswith("/api/")]


def run_deploy(api, wheels_dir, env="dev", token=FAKE_TOKEN, jobs_dir=JOBS_DIR, **options):
    out = io.StringIO()
    result = deploy.deploy(env, wheels_dir=wheels_dir, jobs_dir=jobs_dir, notebooks_dir=options.pop(
        "notebooks_dir", NOTEBOOKS_DIR), out=out, client=token_client(api, token), **options)
    return result, out.getvalue()


def test_first_deploy_creates_every_job_and_the_second_resets_them(databricks_api, wheels_dir):
    first, _ = run_deploy(databricks_api, wheels_dir)
    assert sorted(first.created) == JOB_NAMES and first.updated == {}
    second, printed = run_deploy(databricks_api, wheels_dir)
    assert second.created == {} and second.updated == first.created
    assert sorted(databricks_api.jobs) == sorted(first.created.values())
    assert len(databricks_api.calls("/jobs/create")) == len(JOB_NAMES)
    assert len(databricks_api.calls("/jobs/reset")) == len(JOB_NAMES)
    for name, job_id in first.created.items():
        assert f"reset job        {name} (id {job_id})" in printed


@pytest.mark.parametrize("deploys", [1, 2], ids=["created", "reset"])
def test_deployed_settings_are_the_rendered_job_files(databricks_api, wheels_dir, deploys):
    for _ in range(deploys):
        result, _ = run_deploy(databricks_api, wheels_dir, env="staging")
    staging = jobspec.load_environment("staging", JOBS_DIR)
    for path in jobspec.job_files(JOBS_DIR):
        rendered = jobspec.render_job(jobspec.load_job(path), staging, WHEEL_VERSION)
        deployed = jobspec.with_job_ids(rendered, result.job_ids)
        assert databricks_api.jobs[result.job_ids[rendered["name"]]] == deployed


def test_the_monitoring_job_starts_the_training_job_by_the_id_the_deploy_gave_it(databricks_api, wheels_dir):
    result, printed = run_deploy(databricks_api, wheels_dir, env="dev")

    monitoring = databricks_api.jobs[result.job_ids["taxi_fares_monitoring"]]
    [retrain] = [task for task in monitoring["tasks"] if "run_job_task" in task]
    assert retrain["run_job_task"]["job_id"] == result.job_ids["taxi_fares_training"]
    assert printed.index("taxi_fares_training") < printed.index("taxi_fares_monitoring")


def test_deploy_uploads_both_wheels_to_dbfs_under_the_version_folder(databricks_api, wheels_dir):
    result, printed = run_deploy(databricks_api, wheels_dir, env="dev")
    folder = f"dbfs:/FileStore/taxi_fares/wheels/dev/{WHEEL_VERSION}"
    expected = {f"{folder}/{wheel.name}": wheel.read_bytes() for wheel in wheels_dir.glob("*.whl")}
    assert len(expected) == 2
    assert databricks_api.files == expected
    assert sorted(result.wheels) == sorted(expected)
    assert result.version == WHEEL_VERSION
    assert f"uploaded wheel   {folder}/taxi_fares_mlops-{WHEEL_VERSION}-py3-none-any.whl" in printed


def test_deploy_uploads_both_wheels_to_the_volume_through_the_files_api(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir, env="prod")
    folder = f"/Volumes/prod/taxi_fares/wheels/{WHEEL_VERSION}"
    assert databricks_api.files == {f"{folder}/{wheel.name}": wheel.read_bytes()
                                    for wheel in wheels_dir.glob("*.whl")}
    assert folder in databricks_api.volume_directories
    escaped = folder.replace("+", "%2B")
    assert databricks_api.calls(f"/fs/files{escaped}/taxi_fares-0.1.0%2Bb42-py3-none-any.whl", method="PUT")
    assert not databricks_api.calls("/dbfs/create")


def test_deploy_imports_every_orchestrator_notebook_as_python_source(databricks_api, wheels_dir):
    result, _ = run_deploy(databricks_api, wheels_dir, env="staging")
    expected = {f"{release('staging')}/orchestrator/{path.stem}": path.read_bytes()
                for path in NOTEBOOKS_DIR.glob("*.py")}
    assert expected
    assert {path: notebook["content"] for path, notebook in databricks_api.notebooks.items()} == expected
    assert {(notebook["format"], notebook["language"]) for notebook in databricks_api.notebooks.values()} == \
        {("SOURCE", "PYTHON")}
    assert sorted(result.notebooks) == sorted(expected)


def test_deploy_with_tests_imports_the_nutter_notebooks_beside_the_orchestrator(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir, tests_dir=NUTTER_DIR)
    imported = set(databricks_api.notebooks)
    for path in NUTTER_DIR.glob("test_*.py"):
        assert f"{release('dev')}/tests/nutter/{path.stem}" in imported


def test_every_deployed_notebook_path_was_imported(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir, env="prod")
    for settings in databricks_api.jobs.values():
        notebook_tasks = [task for task in settings["tasks"] if "notebook_task" in task]
        assert notebook_tasks
        for task in notebook_tasks:
            assert task["notebook_task"]["notebook_path"] in databricks_api.notebooks


@pytest.mark.parametrize("tags, described", [
    ({"env": "staging"}, "tagged env=staging"),
    ({"project": "taxi_fares"}, "no env tag"),
])
def test_a_job_of_another_environment_is_never_touched(databricks_api, wheels_dir, tags, described):
    name = JOB_NAMES[-1]
    databricks_api.jobs[7] = {"name": name, "tags": tags}
    with pytest.raises(JobError) as caught:
        run_deploy(databricks_api, wheels_dir, env="dev")
    assert f"already has a job named '{name}' that is not environment dev's: id 7 ({described}); " \
           f"deploy never touches it" in str(caught.value)
    assert databricks_api.jobs == {7: {"name": name, "tags": tags}}
    assert databricks_api.files == {} and databricks_api.notebooks == {}


def test_several_jobs_of_one_name_and_environment_fail_listing_their_ids(databricks_api, wheels_dir):
    name = JOB_NAMES[0]
    databricks_api.jobs.update({7: {"name": name, "tags": {"env": "dev"}},
                                8: {"name": name, "tags": {"env": "dev"}}})
    with pytest.raises(JobError) as caught:
        run_deploy(databricks_api, wheels_dir)
    assert f"has 2 jobs named '{name}' for environment dev (ids 7, 8)" in str(caught.value)


def test_transient_errors_are_retried_by_the_sdk(databricks_api, wheels_dir):
    databricks_api.fail_next(503, times=2, path_prefix="/api/2.0/workspace/import")
    result, _ = run_deploy(databricks_api, wheels_dir)
    assert sorted(result.created) == JOB_NAMES
    imports = databricks_api.calls("/workspace/import")
    assert len(imports) == len(result.notebooks) + 2


def test_rejected_token_names_the_host_and_never_the_token(databricks_api, wheels_dir, capsys, monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("DATABRICKS_TOKEN", WRONG_TOKEN)
    with pytest.raises(ConfigError) as caught:
        deploy.deploy("dev", host=databricks_api.url, wheels_dir=wheels_dir, jobs_dir=JOBS_DIR,
                      notebooks_dir=NOTEBOOKS_DIR, out=out)
    message = str(caught.value)
    assert f"Databricks at {databricks_api.url} rejected the credentials (HTTP 401)" in message
    shown = "".join(traceback.format_exception(caught.value)) + out.getvalue() + "".join(capsys.readouterr())
    assert WRONG_TOKEN not in shown
    assert databricks_api.jobs == {} and databricks_api.files == {}


@pytest.mark.parametrize("status, path, server_says, error_type, we_say", [
    (403, "/api/2.2/jobs/create", "no CAN_MANAGE on jobs", ConfigError,
     "denied permission (HTTP 403) to create job"),
    (400, "/api/2.0/dbfs/create", "quota exceeded", JobError, f"failed to upload taxi_fares-{WHEEL_VERSION}"),
])
def test_api_errors_name_the_host_and_the_action(databricks_api, wheels_dir, status, path, server_says,
                                                 error_type, we_say):
    databricks_api.fail_next(status, path_prefix=path, message=server_says)
    with pytest.raises(error_type) as caught:
        run_deploy(databricks_api, wheels_dir)
    message = str(caught.value)
    assert f"Databricks at {databricks_api.url} {we_say}" in message
    assert server_says in message


def test_host_and_token_come_from_the_environment(databricks_api, wheels_dir, monkeypatch):
    monkeypatch.setenv("DATABRICKS_HOST", databricks_api.url + "/")
    monkeypatch.setenv("DATABRICKS_TOKEN", FAKE_TOKEN)
    result = deploy.deploy("dev", wheels_dir=wheels_dir, jobs_dir=JOBS_DIR, notebooks_dir=NOTEBOOKS_DIR,
                           out=io.StringIO())
    assert result.host == databricks_api.url
    assert all(request.headers["authorization"] == f"Bearer {FAKE_TOKEN}"
               for request in databricks_api.requests if request.path.startswith("/api/"))


def test_no_host_lists_every_way_to_authenticate(wheels_dir):
    with pytest.raises(ConfigError) as caught:
        deploy.deploy("dev", wheels_dir=wheels_dir, jobs_dir=JOBS_DIR, notebooks_dir=NOTEBOOKS_DIR)
    message = str(caught.value)
    assert message.startswith("no Databricks host: pass --host, set DATABRICKS_HOST, or name a --profile")
    assert "\n" not in message
    for way in ("DATABRICKS_CLIENT_SECRET", "ARM_CLIENT_SECRET", "az login", "azure-devops-oidc", "--profile",
                "DATABRICKS_TOKEN"):
        assert way in message


def test_reachable_host_without_credentials_lists_every_way_to_authenticate(databricks_api, wheels_dir):
    with pytest.raises(ConfigError) as caught:
        deploy.deploy("dev", host=databricks_api.url, wheels_dir=wheels_dir, jobs_dir=JOBS_DIR,
                      notebooks_dir=NOTEBOOKS_DIR, out=io.StringIO())
    message = str(caught.value)
    assert message.startswith(f"no Databricks credentials for {databricks_api.url}; authenticate with")
    assert "DATABRICKS_CLIENT_ID + DATABRICKS_CLIENT_SECRET" in message and "\n" not in message
    assert databricks_api.files == {} and databricks_api.jobs == {}


@pytest.mark.parametrize("host, reason", [("http://127.0.0.1:{closed}", "Connection refused"),
                                          ("https://adb-0000.invalid", "adb-0000.invalid:443")])
def test_unreachable_host_is_named_before_the_sdk_starts_retrying(wheels_dir, monkeypatch, host, reason):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    host = host.format(closed=closed)
    monkeypatch.setenv("DATABRICKS_TOKEN", FAKE_TOKEN)
    with pytest.raises(JobError) as caught:
        deploy.deploy("dev", host=host, wheels_dir=wheels_dir, jobs_dir=JOBS_DIR, notebooks_dir=NOTEBOOKS_DIR)
    assert str(caught.value).startswith(f"cannot reach Databricks at {host} (")
    assert reason in str(caught.value)


def test_oauth_machine_to_machine_gets_a_token_from_the_workspace_token_endpoint(databricks_api, wheels_dir,
                                                                                 monkeypatch):
    from support.databricks_api import CLIENT_ID, CLIENT_SECRET

    monkeypatch.setenv("DATABRICKS_HOST", databricks_api.url)
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", CLIENT_SECRET)
    out = io.StringIO()
    result = deploy.deploy("dev", wheels_dir=wheels_dir, jobs_dir=JOBS_DIR, notebooks_dir=NOTEBOOKS_DIR,
                           out=out)
    assert sorted(result.created) == JOB_NAMES
    (token_request,) = databricks_api.calls("/oidc/v1/token")
    (issued,) = databricks_api.issued_tokens
    sent = api_requests(databricks_api)
    assert sent and all(request.headers["authorization"] == f"Bearer {issued}" for request in sent)
    assert CLIENT_SECRET not in out.getvalue()
    assert token_request.method == "POST"


def test_wrong_client_secret_is_refused_without_showing_it(databricks_api, wheels_dir, monkeypatch):
    from support.databricks_api import CLIENT_ID

    wrong = "dose" + "fedcba9876543210" * 2
    monkeypatch.setenv("DATABRICKS_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DATABRICKS_CLIENT_SECRET", wrong)
    with pytest.raises((ConfigError, JobError)) as caught:
        deploy.deploy("dev", host=databricks_api.url, wheels_dir=wheels_dir, jobs_dir=JOBS_DIR,
                      notebooks_dir=NOTEBOOKS_DIR, out=io.StringIO())
    assert databricks_api.url in str(caught.value)
    assert wrong not in "".join(traceback.format_exception(caught.value))
    assert databricks_api.jobs == {}


def test_missing_wheels_say_to_run_make_wheels(databricks_api, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as caught:
        run_deploy(databricks_api, empty)
    assert "no taxi_fares or taxi_fares_mlops wheel" in str(caught.value)
    assert "run `make wheels`" in str(caught.value)
    assert api_requests(databricks_api) == []


def test_one_missing_wheel_is_named(databricks_api, wheels_dir):
    next(wheels_dir.glob("taxi_fares_mlops-*.whl")).unlink()
    with pytest.raises(ConfigError, match=r"no taxi_fares_mlops wheel in .*: run `make wheels`"):
        run_deploy(databricks_api, wheels_dir)


def test_wheels_of_different_versions_are_rejected(databricks_api, wheels_dir):
    next(wheels_dir.glob("taxi_fares_mlops-*.whl")).rename(
        wheels_dir / "taxi_fares_mlops-0.1.0+b43-py3-none-any.whl")
    with pytest.raises(ConfigError, match=r"versions \(0.1.0\+b42, 0.1.0\+b43\); run `make wheels`"):
        run_deploy(databricks_api, wheels_dir)


def test_stale_wheels_beside_new_ones_are_rejected(databricks_api, wheels_dir):
    (wheels_dir / "taxi_fares-0.1.0+b41-py3-none-any.whl").write_bytes(b"old")
    with pytest.raises(ConfigError, match="more than one taxi_fares wheel"):
        run_deploy(databricks_api, wheels_dir)


def test_job_running_a_notebook_that_is_not_imported_fails_before_any_request(databricks_api, wheels_dir,
                                                                              tmp_path):
    jobs_dir = tmp_path / "jobs"
    shutil.copytree(JOBS_DIR, jobs_dir)
    job = {"name": "orphan",
           "tasks": [{"task_key": "t", "notebook_task": {"notebook_path": "orchestrator/gone"}}]}
    (jobs_dir / "orphan.json").write_text(json.dumps(job))
    with pytest.raises(JobError) as caught:
        run_deploy(databricks_api, wheels_dir, jobs_dir=jobs_dir)
    assert f"job 'orphan' task 't' runs notebook {release('dev')}/orchestrator/gone" in str(caught.value)
    assert api_requests(databricks_api) == []


def test_invalid_job_file_fails_before_any_request(databricks_api, wheels_dir, tmp_path):
    jobs_dir = tmp_path / "jobs"
    shutil.copytree(JOBS_DIR, jobs_dir)
    (jobs_dir / "typo.json").write_text(json.dumps({"name": "typo", "max_concurent_runs": 1}))
    with pytest.raises(JobError, match="field 'max_concurent_runs' is lost when parsed"):
        run_deploy(databricks_api, wheels_dir, jobs_dir=jobs_dir)
    assert api_requests(databricks_api) == []


def test_folder_without_notebooks_is_rejected(databricks_api, wheels_dir, tmp_path):
    (tmp_path / "plain.py").write_text("print('not a notebook')\n")
    with pytest.raises(ConfigError, match="no Databricks source notebooks in"):
        run_deploy(databricks_api, wheels_dir, notebooks_dir=tmp_path)


# ---------------------------------------------------------------- trigger

def run_trigger(api, parameters=None, **options):
    out = io.StringIO()
    result = trigger("dev", "taxi_fares_training", parameters, client=token_client(api), jobs_dir=JOBS_DIR,
                     out=out, **options)
    return result, out.getvalue()


def test_trigger_runs_the_deployed_job_with_job_parameters(databricks_api, wheels_dir):
    deployed, _ = run_deploy(databricks_api, wheels_dir)
    result, printed = run_trigger(databricks_api, {"training_data_end_date": "2016-01-07"})
    assert result.job_id == deployed.created["taxi_fares_training"]
    request = databricks_api.runs[result.run_id]["request"]
    assert request == {"job_id": result.job_id, "job_parameters": {"training_data_end_date": "2016-01-07"}}
    assert f"started run {result.run_id} of job taxi_fares_training" in printed


def test_trigger_and_wait_reports_success(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir)
    result, printed = run_trigger(databricks_api, wait=True)
    assert result.result_state == "SUCCESS"
    assert result.run_page_url.endswith(f"/run/{result.run_id}")
    assert f"ended SUCCESS: {result.run_page_url}" in printed


def test_trigger_and_wait_fails_when_the_run_fails(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir)
    databricks_api.run_result_state = "FAILED"
    with pytest.raises(JobError, match=r"run \d+ of job taxi_fares_training on .* ended FAILED: Task train"):
        run_trigger(databricks_api, wait=True)


def test_trigger_and_wait_gives_up_after_the_timeout(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir)
    databricks_api.run_life_cycle_state = "RUNNING"
    with pytest.raises(JobError, match=r"run \d+ of job taxi_fares_training on .* did not finish within 0"):
        run_trigger(databricks_api, wait=True, timeout_minutes=0)


def test_trigger_and_wait_reports_an_internal_error(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir)
    databricks_api.run_life_cycle_state = "INTERNAL_ERROR"
    with pytest.raises(JobError, match=r"run \d+ of job taxi_fares_training on .* failed: .*INTERNAL_ERROR"):
        run_trigger(databricks_api, wait=True)


def test_trigger_notebook_parameters_must_be_declared_by_every_notebook_task(databricks_api):
    task = {"notebook_path": "/Shared/n", "base_parameters": {"env": "dev", "seed": "1"}}
    databricks_api.jobs[5] = {"name": "taxi_fares_training", "tags": {"env": "dev"}, "tasks": [
        {"task_key": "a", "notebook_task": task},
        {"task_key": "b", "notebook_task": {**task, "base_parameters": {"env": "dev"}}}]}
    result, _ = run_trigger(databricks_api, {"env": "dev"})
    assert databricks_api.runs[result.run_id]["request"]["notebook_params"] == {"env": "dev"}
    with pytest.raises(ConfigError, match="does not declare parameter\\(s\\) seed; valid names are: env"):
        run_trigger(databricks_api, {"seed": "2"})


def test_trigger_with_an_unknown_parameter_lists_the_valid_names(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir)
    with pytest.raises(ConfigError) as caught:
        run_trigger(databricks_api, {"num_leaves": "8"})
    assert "job 'taxi_fares_training' does not declare parameter(s) num_leaves" in str(caught.value)
    assert "training_num_leaves" in str(caught.value)
    assert databricks_api.runs == {}


def test_trigger_refuses_a_secret_looking_value_without_showing_it(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir)
    with pytest.raises(ConfigError) as caught:
        run_trigger(databricks_api, {"taxi_fares_raw_data": WRONG_TOKEN})
    assert "parameter(s) taxi_fares_raw_data hold what looks like a secret" in str(caught.value)
    assert WRONG_TOKEN not in str(caught.value)


def test_trigger_before_deploy_says_to_deploy_first(databricks_api):
    with pytest.raises(JobError, match=r"has no job 'taxi_fares_training' for environment dev; "
                                       r"run `mlops deploy run --env dev` first"):
        run_trigger(databricks_api)


def test_trigger_in_an_unknown_environment_lists_the_valid_ones(databricks_api):
    with pytest.raises(ConfigError, match="unknown environment 'qa'; available environments are: dev, prod"):
        trigger("qa", "taxi_fares_training", client=token_client(databricks_api), jobs_dir=JOBS_DIR)


@pytest.mark.parametrize("pairs, expected", [
    (["a=1", "b=x=y", "c="], {"a": "1", "b": "x=y", "c": ""}),
    ([], {}),
])
def test_parameter_assignments_are_parsed(pairs, expected):
    assert parse_assignments(pairs) == expected


@pytest.mark.parametrize("pair", ["novalue", "=1"])
def test_malformed_parameter_assignment_is_rejected(pair):
    with pytest.raises(ConfigError, match=f"parameter '{pair}' must be written name=value"):
        parse_assignments([pair])


def test_notebook_content_is_sent_base64_encoded(databricks_api, wheels_dir):
    run_deploy(databricks_api, wheels_dir)
    request = databricks_api.calls("/workspace/import")[0].json()
    assert base64.b64decode(request["content"]) == databricks_api.notebooks[request["path"]]["content"]
    assert request["overwrite"] is True


@pytest.mark.parametrize("env", ["staging", "prod"])
def test_unity_catalog_environments_deploy_nothing_that_depends_on_a_table_path(
        databricks_api, wheels_dir, env):
    result, _ = run_deploy(databricks_api, wheels_dir, env=env)

    for job_id in result.job_ids.values():
        parameters = {item["name"]: item["default"] for item in databricks_api.jobs[job_id]["parameters"]}
        assert parameters["table_location"] == f"{env}.taxi_fares"
    assert databricks_api.volume_directories
    wheel_folder = f"/Volumes/{env}/taxi_fares/wheels/{WHEEL_VERSION}"
    # The wheel folder and its parents: no folder for tables.
    assert all(wheel_folder.startswith(folder) for folder in databricks_api.volume_directories)
    assert not databricks_api.calls("/dbfs/mkdirs") and not databricks_api.calls("/dbfs/create")
    sent = [request.path + request.body.decode("utf-8", "replace")
            for request in api_requests(databricks_api)]
    assert not [text for text in sent if "/tables" in text or "dbfs:/mlops" in text]
