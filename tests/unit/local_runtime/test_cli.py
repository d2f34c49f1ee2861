"""The notebook run and job run subcommands, driven through argparse as the mlops CLI does."""
import argparse

import pytest

from mlops.cli.runtime import register_cli

from .notebook_files import JOBS, NOTEBOOKS


def _main(argv):
    parser = argparse.ArgumentParser(prog="mlops")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def cli_env(spark, mlops_home):
    """The CLI reuses the active test SparkSession instead of starting its own."""
    return mlops_home


def test_notebook_run_prints_the_exit_value(cli_env, capsys):
    code = _main(["notebook", "run", str(NOTEBOOKS / "prepare.py"), "-p", "base=5"])
    assert code == 0
    assert capsys.readouterr().out.strip().endswith("exit value: 5")


def test_notebook_failure_is_one_line_then_the_traceback(cli_env, capsys):
    code = _main(["notebook", "run", str(NOTEBOOKS / "failing.py")])
    assert code == 1
    stderr = capsys.readouterr().err.splitlines()
    assert stderr[0].startswith("error: ") and stderr[0].endswith(
        "failing.py failed in cell 2 (ratio = 1 / 0): ZeroDivisionError: division by zero")
    assert stderr[1] == "Traceback (most recent call last):"
    assert "ZeroDivisionError: division by zero" in stderr


def test_malformed_parameter_is_rejected(cli_env, capsys):
    assert _main(["notebook", "run", str(NOTEBOOKS / "prepare.py"), "-p", "base"]) == 1
    assert capsys.readouterr().err.strip() == "error: parameter 'base' must be written name=value"


def test_repeated_parameter_is_rejected(cli_env, capsys):
    assert _main(["job", "run", str(JOBS / "diamond.json"), "-p", "factor=1", "-p", "factor=2"]) == 1
    assert capsys.readouterr().err.strip() == "error: parameter 'factor' given more than once"


def test_job_run_exit_codes(cli_env, capsys):
    assert _main(["job", "run", str(JOBS / "diamond.json")]) == 0
    assert _main(["job", "run", str(JOBS / "diamond.json"), "-p", "fail_task=right"]) == 1
    out = capsys.readouterr().out
    assert "[2/4] right ... FAILED in " in out and "job 'diamond' FAILED in " in out


def test_job_repair_through_the_cli(cli_env, capsys):
    assert _main(["job", "run", str(JOBS / "diamond.json"), "-p", "fail_task=right"]) == 1
    run_id = sorted(path.stem for path in (cli_env / "runs").glob("*.json"))[-1]
    assert _main(["job", "run", str(JOBS / "diamond.json"), "--repair", run_id, "-p", "fail_task=none"]) == 0
    assert f"repair 1 of run {run_id}" in capsys.readouterr().out


def test_invalid_job_file_is_one_clear_line(cli_env, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"tasks": []}')
    assert _main(["job", "run", str(broken)]) == 1
    assert capsys.readouterr().err.strip() == f"error: job file {broken} has no tasks"


@pytest.mark.parametrize("unusable", ["/sys/mlops-home", "/proc/mlops/home"])
def test_an_unusable_mlops_home_is_one_line_naming_it(spark, monkeypatch, capsys, unusable):
    monkeypatch.setenv("MLOPS_HOME", unusable)
    assert _main(["job", "run", str(JOBS / "diamond.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: MLOPS_HOME folder {unusable} is not usable (")


def test_runs_list_and_show_tell_what_happened(cli_env, capsys):
    assert _main(["job", "run", str(JOBS / "diamond.json"), "-p", "fail_task=right"]) == 1
    run_id = sorted(path.stem for path in (cli_env / "runs").glob("*.json"))[-1]
    capsys.readouterr()

    assert _main(["runs", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(run_id))
    assert row.split()[1:3] == ["diamond", "FAILED"]

    assert _main(["runs", "show", run_id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"run {run_id} of job 'diamond': FAILED")
    assert "right    FAILED" in out and "right was told to fail" in out
    assert "combine  UPSTREAM_FAILED" in out


@pytest.mark.parametrize("argv, message", [
    (["runs", "list", "--limit", "0"], "error: --limit must be at least 1, got 0"),
    (["runs", "show", "no-such-run"], "error: no run record for run id 'no-such-run'"),
])
def test_runs_commands_refuse_bad_input(cli_env, capsys, argv, message):
    assert _main(argv) == 1
    assert capsys.readouterr().err.startswith(message)


def test_a_task_outcome_names_version_status_and_decision():
    from mlops.local.run_record import task_outcome

    deploy = {"state": "SUCCESS", "task_values": {
        "model_name": "taxi_fares", "model_version": "3", "promotion_decision": "not_promoted",
        "promotion_reason": "challenger rmse 3.9 > 3.7"}}
    assert task_outcome(deploy) == "model taxi_fares version 3; not_promoted (challenger rmse 3.9 > 3.7)"
    assert task_outcome({"state": "FAILED", "error": "ValueError: boom"}) == "ValueError: boom"
    monitor = {"state": "SUCCESS", "exit_value": "true", "task_values": {
        "retrain_required": "true", "reason": "retrain: 3 of the last 5 windows with data over threshold",
        "report": "file:///runs/1/artifacts/monitoring/report.html"}}
    assert task_outcome(monitor) == ("retraining required: retrain: 3 of the last 5 windows with data over "
                                     "threshold; report file:///runs/1/artifacts/monitoring/report.html")
    retrain = {"state": "SUCCESS", "child_run_id": "20160301-000000000-abcdef", "task_values": {}}
    assert task_outcome(retrain) == "child run 20160301-000000000-abcdef"


def test_notebook_run_prints_its_run_id_and_writes_a_run_record(cli_env, capsys):
    assert _main(["notebook", "run", str(NOTEBOOKS / "prepare.py"), "-p", "base=7"]) == 0
    out = capsys.readouterr().out
    (record_path,) = (cli_env / "runs").glob("*.json")
    assert f"job 'notebook_prepare' run {record_path.stem}: 1 of 1 tasks to run" in out
    assert _main(["runs", "show", record_path.stem]) == 0
    shown = capsys.readouterr().out
    assert f"run {record_path.stem} of job 'notebook_prepare': SUCCESS" in shown
    assert "prepare  SUCCESS" in shown


def test_notebook_run_of_a_missing_file_names_it(cli_env, capsys):
    assert _main(["notebook", "run", str(NOTEBOOKS / "no_such.py")]) == 1
    assert capsys.readouterr().err.strip().endswith("no_such.py does not exist")


def test_help_and_argument_errors_load_no_heavy_library():
    import subprocess
    import sys

    probe = ("import sys\nfrom mlops.cli import build_parser\nparser = build_parser()\n"
             "try:\n    parser.parse_args(['serve', '--port', 'x'])\nexcept SystemExit:\n    pass\n"
             "print(','.join(sorted(name for name in ('mlflow', 'lightgbm', 'sklearn', 'deltalake') "
             "if name in sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "", loaded.stdout
    assert "argument --port: invalid int value: 'x'" in loaded.stderr


@pytest.mark.parametrize("argv, expected", [
    (["serve", "--help"], ["--flush-rows FLUSH_ROWS", "(default: 5000)", "--log-table LOG_TABLE",
                           "catalog.schema.table", "(default: Champion)"]),
    (["data", "generate", "--help"], ["--seed SEED", "(default: 0)", "--distance-scale", "(default: 1.0)",
                                      "first pickup day"]),
])
def test_help_describes_each_option_with_its_default(argv, expected, capsys):
    from mlops.cli import main

    with pytest.raises(SystemExit):
        main(argv)
    shown = " ".join(capsys.readouterr().out.split())
    assert all(text in shown for text in expected), shown


def test_job_run_names_the_bundle_s_targets_and_jobs_when_one_is_wrong(cli_env, capsys, monkeypatch):
    from support.spark_cluster import REPO_ROOT

    monkeypatch.chdir(REPO_ROOT / "orchestrator")
    assert _main(["job", "run", "taxi_fares_training", "--target", "qa"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {REPO_ROOT / 'databricks.yml'}: no target 'qa' (targets: dev, staging, prod); "
        "pass one of them with --target")
    assert _main(["job", "run", "taxi_fares_trainer", "--target", "dev"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: the bundle in {REPO_ROOT} has no job 'taxi_fares_trainer' (jobs: taxi_fares_batch_scoring, "
        "taxi_fares_integration_tests, taxi_fares_monitoring, taxi_fares_streaming, taxi_fares_training)")
    assert _main(["job", "run", str(JOBS / "diamond.json"), "--target", "dev"]) == 1
    assert "--target and --var apply to the bundle's jobs only" in capsys.readouterr().err


def test_job_run_outside_a_bundle_says_where_it_looked(cli_env, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert _main(["job", "run", "taxi_fares_training"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: no databricks.yml in {tmp_path.resolve()} or a folder above it: "
        "run from the bundle's folder")


def test_bundle_check_reports_no_problem_in_the_repository(capsys, monkeypatch):
    from mlops.cli import main
    from support.spark_cluster import REPO_ROOT, ensure_wheels

    ensure_wheels()
    monkeypatch.chdir(REPO_ROOT)
    assert main(["bundle", "check"]) == 0
    assert capsys.readouterr().out.strip().startswith(f"bundle taxi_fares in {REPO_ROOT}: no problems "
                                                      "(every target; 5 jobs, 1 schemas, 4 volumes")
