"""A secret that no pattern recognises never shows: not in output, run records, error.txt,
telemetry, MLflow or table metadata. Each case runs a real job through ``mlops job run``."""
import argparse
import datetime
import json
import uuid

import pytest
from deltalake import DeltaTable
from taxi_fares.data import generate_trips

from mlops.cli.runtime import register_cli
from mlops.local.dbutils import secret_env_name
from mlops.observability.redaction import SECRET_VALUE_MARKER

from .notebook_files import write_notebook

SCOPE, KEY = "kv-redaction", "planted"


@pytest.fixture
def planted(spark, mlops_home, monkeypatch):
    """A secret value in a secret scope; no redaction pattern matches it."""
    value = f"plain-{uuid.uuid4().hex[:16]}"
    monkeypatch.setenv(secret_env_name(SCOPE, KEY), value)
    return value


def run_job(tmp_path, notebook_source, parameters=(), job_parameters=()):
    """``mlops job run`` on a one-task job; returns the exit code."""
    write_notebook(tmp_path / "notebooks" / "task.py", *notebook_source)
    task = {"task_key": "task", "notebook_task": {"notebook_path": "notebooks/task"}}
    job = {"name": "redaction", "tasks": [task],
           "parameters": [{"name": name, "default": ""} for name in job_parameters]}
    (tmp_path / "jobs").mkdir(exist_ok=True)
    (tmp_path / "jobs" / "job.json").write_text(json.dumps(job))
    parser = argparse.ArgumentParser(prog="mlops")
    register_cli(parser.add_subparsers(dest="command", required=True))
    argv = ["job", "run", str(tmp_path / "jobs" / "job.json")]
    for pair in parameters:
        argv += ["-p", pair]
    args = parser.parse_args(argv)
    return args.func(args)


def leaks(secret, home, output) -> list:
    """Where the secret was found: 'output' and every file under MLOPS_HOME that holds it."""
    places = ["output"] if secret in output else []
    places += [str(path.relative_to(home)) for path in sorted(home.rglob("*"))
               if path.is_file() and secret.encode() in path.read_bytes()]
    return places


def test_a_notebook_that_prints_and_raises_with_a_secret_shows_redacted(planted, mlops_home, tmp_path, capfd):
    code = run_job(tmp_path, [f"""
value = dbutils.secrets.get("{SCOPE}", "{KEY}")
print("the value is", value)
raise RuntimeError(f"failed with {{value}}")
"""])
    out, err = capfd.readouterr()
    assert code == 1
    assert f"the value is {SECRET_VALUE_MARKER}" in out
    record = json.loads(next((mlops_home / "runs").glob("*.json")).read_text())
    assert f"RuntimeError: failed with {SECRET_VALUE_MARKER}" in record["tasks"]["task"]["error"]
    assert leaks(planted, mlops_home, out + err) == []


def test_a_plain_cell_that_fails_with_a_secret_leaves_it_nowhere(planted, mlops_home, tmp_path, capfd):
    code = run_job(tmp_path, ['raise ValueError("bad note: " + dbutils.widgets.get("note"))'],
                   parameters=[f"note={planted}"], job_parameters=["note"])
    out, err = capfd.readouterr()
    assert code == 1
    error_file = next((mlops_home / "runs").rglob("error.txt")).read_text()
    assert "ValueError: bad note: " in error_file
    assert leaks(planted, mlops_home, out + err) == []


def test_a_bad_config_value_that_is_a_secret_is_not_echoed(planted, mlops_home, tmp_path, capfd):
    code = run_job(tmp_path, ["""
from mlops.config import TrainingConfig
TrainingConfig.from_widgets(dbutils)
"""], parameters=[f"training_num_leaves={planted}"], job_parameters=["training_num_leaves"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "parameter 'training_num_leaves' must be an integer, got ***" in out + err
    assert leaks(planted, mlops_home, out + err) == []


def test_a_stage_exception_with_a_secret_leaves_it_nowhere(planted, mlops_home, tmp_path, capfd):
    code = run_job(tmp_path, [f"""
from mlops.config import TrainingConfig
from mlops.orchestration import task_run

config = TrainingConfig.from_params({{"experiment_name": "/Shared/redaction"}})

def leaky(run):
    try:
        raise OSError("storage said no to " + dbutils.secrets.get("{SCOPE}", "{KEY}"))
    except OSError as error:
        raise ValueError("cannot open the raw data") from error

with task_run("task", config, spark, dbutils) as run:
    run.stage("leaky", leaky)
"""])
    out, err = capfd.readouterr()
    assert code == 1
    assert "stage 'leaky' failed: ValueError: cannot open the raw data" in out + err
    assert list(mlops_home.rglob("telemetry-task.jsonl")), "no telemetry was written to check"
    assert (mlops_home / "mlflow.db").exists()
    assert leaks(planted, mlops_home, out + err) == []


def test_an_input_path_with_a_secret_in_its_query_succeeds_and_stores_it_nowhere(
        planted, mlops_home, tmp_path, spark, capfd):
    raw = tmp_path / f"trips?sv=1&token2={planted}"
    generate_trips(spark, 300, datetime.date(2016, 1, 1), datetime.date(2016, 1, 3), seed=3) \
        .write.parquet(str(raw))
    code = run_job(tmp_path, ["""
from mlops.config import TrainingConfig
from mlops.orchestration import task_run
from mlops.stages.training import engineer_features

config = TrainingConfig.from_widgets(dbutils)
with task_run("task", config, spark, dbutils) as run:
    run.stage("feature_engineering", engineer_features)
"""], parameters=[f"taxi_fares_raw_data={raw}", "training_data_start_date=2016-01-01",
                  "training_data_end_date=2016-01-03", "table_location=dbfs:/tables",
                  "experiment_name=/Shared/redaction"],
        job_parameters=["taxi_fares_raw_data", "training_data_start_date", "training_data_end_date",
                        "table_location", "experiment_name"])
    out, err = capfd.readouterr()
    assert code == 0, out[-2000:] + err[-2000:]
    table = DeltaTable(str(mlops_home / "dbfs" / "tables" / "training_trips"))
    metadata = json.loads(table.metadata().configuration["mlops.metadata"])
    assert metadata["source_path"] == str(tmp_path / "trips")
    assert leaks(planted, mlops_home, out + err) == []
