"""The `mlops deploy` command line: render, run and trigger, parsed by argparse as `mlops` does."""
import argparse
import json

import pytest

from mlops.cli import deploy as deploy_cli
from mlops.deploy import jobspec
from support.databricks_api import FAKE_TOKEN

from .conftest import JOBS_DIR, REPO_ROOT, WHEEL_VERSION

TRAINING_JOB = JOBS_DIR / "taxi_fares_training.json"


def mlops(*argv):
    parser = argparse.ArgumentParser(prog="mlops")
    deploy_cli.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args([str(arg) for arg in argv])
    return args.func(args)


def test_render_prints_the_rendered_job(capsys):
    assert mlops("deploy", "render", TRAINING_JOB, "--env", "staging", "--wheel-version", WHEEL_VERSION,
                 "--jobs-dir", JOBS_DIR) == 0
    staging = jobspec.load_environment("staging", JOBS_DIR)
    expected = jobspec.render_job(jobspec.load_job(TRAINING_JOB), staging, WHEEL_VERSION)
    assert json.loads(capsys.readouterr().out) == expected


def test_render_writes_the_output_file(tmp_path, capsys):
    output = tmp_path / "rendered.json"
    mlops("deploy", "render", TRAINING_JOB, "--env", "prod", "--jobs-dir", JOBS_DIR, "--output", output)
    assert json.loads(output.read_text())["tags"]["env"] == "prod"
    assert capsys.readouterr().out == ""


def test_render_parameters_only_reads_the_version_from_the_wheels(wheels_dir, capsys):
    mlops("deploy", "render", TRAINING_JOB, "--env", "dev", "--wheels-dir", wheels_dir,
          "--jobs-dir", JOBS_DIR, "--parameters-only")
    parameters = json.loads(capsys.readouterr().out)
    assert parameters["wheel_version"] == WHEEL_VERSION
    assert parameters["wheel_path"] == f"/dbfs/FileStore/taxi_fares/wheels/dev/{WHEEL_VERSION}"
    assert all(isinstance(value, str) for value in parameters.values())


def test_render_with_an_unknown_environment_lists_the_valid_ones(capsys):
    assert mlops("deploy", "render", TRAINING_JOB, "--env", "test", "--jobs-dir", JOBS_DIR) == 1
    assert capsys.readouterr().err.startswith(
        "error: unknown environment 'test'; available environments are: dev")


def test_deploy_requires_a_sub_command(capsys):
    with pytest.raises(SystemExit):
        mlops("deploy")
    assert "render" in capsys.readouterr().err


def test_run_and_trigger_read_credentials_from_the_environment(databricks_api, wheels_dir, monkeypatch,
                                                               capsys):
    monkeypatch.setenv("DATABRICKS_HOST", databricks_api.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", FAKE_TOKEN)
    assert mlops("deploy", "run", "--env", "dev", "--wheels-dir", wheels_dir, "--jobs-dir", JOBS_DIR,
                 "--notebooks-dir", REPO_ROOT / "orchestrator",
                 "--tests-dir", REPO_ROOT / "tests" / "nutter") == 0
    assert mlops("deploy", "trigger", "--env", "dev", "--job", "taxi_fares_training", "--jobs-dir", JOBS_DIR,
                 "-p", "training_data_start_date=2016-01-01", "-p", "training_data_end_date=2016-01-07",
                 "--wait") == 0
    printed = capsys.readouterr().out
    assert "created job      taxi_fares_training" in printed
    assert "ended SUCCESS" in printed
    assert FAKE_TOKEN not in printed
    (run,) = databricks_api.runs.values()
    assert run["request"]["job_parameters"] == {"training_data_start_date": "2016-01-01",
                                                "training_data_end_date": "2016-01-07"}


def test_there_is_no_token_option(capsys):
    with pytest.raises(SystemExit):
        mlops("deploy", "run", "--env", "dev", "--token", FAKE_TOKEN)
    assert "unrecognized arguments" in capsys.readouterr().err


def test_render_takes_the_wheel_version_from_dist_as_deploy_does(wheels_dir, monkeypatch, capsys):
    monkeypatch.chdir(wheels_dir.parent)
    assert mlops("deploy", "render", TRAINING_JOB, "--env", "prod", "--jobs-dir", JOBS_DIR,
                 "--parameters-only") == 0
    assert json.loads(capsys.readouterr().out)["wheel_version"] == WHEEL_VERSION
    assert mlops("deploy", "render", "--env", "prod", "--jobs-dir", JOBS_DIR, "--release-folder") == 0
    assert capsys.readouterr().out.strip() == f"/Shared/taxi_fares/prod/releases/{WHEEL_VERSION}"


def test_render_without_wheels_says_to_build_them(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert mlops("deploy", "render", TRAINING_JOB, "--env", "prod", "--jobs-dir", JOBS_DIR) == 1
    assert capsys.readouterr().err.startswith("error: no taxi_fares or taxi_fares_mlops wheel in dist/")


def test_render_resolves_rolling_dates_for_a_run_starting_now(wheels_dir, monkeypatch, capsys):
    import datetime

    monkeypatch.chdir(wheels_dir.parent)
    mlops("deploy", "render", TRAINING_JOB, "--env", "prod", "--jobs-dir", JOBS_DIR, "--parameters-only",
          "--resolve-dates")
    parameters = json.loads(capsys.readouterr().out)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    assert parameters["training_data_end_date"] == f"{today}-1d"


def test_dry_run_from_the_command_line_needs_no_workspace(wheels_dir, monkeypatch, capsys):
    monkeypatch.setenv("DATABRICKS_TOKEN", FAKE_TOKEN)
    assert mlops("deploy", "run", "--env", "prod", "--dry-run", "--wheels-dir", wheels_dir,
                 "--jobs-dir", JOBS_DIR, "--notebooks-dir", REPO_ROOT / "orchestrator") == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: deploy environment prod")
    assert "DATABRICKS_TOKEN=[REDACTED]" in out and FAKE_TOKEN not in out


def test_deploy_without_a_host_is_one_line_naming_the_ways_to_sign_in(wheels_dir, capsys):
    assert mlops("deploy", "run", "--env", "prod", "--wheels-dir", wheels_dir, "--jobs-dir", JOBS_DIR,
                 "--notebooks-dir", REPO_ROOT / "orchestrator") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no Databricks host: pass --host")
