"""MLOPS_HOME layout, and a fresh process building its own Spark session from the environment."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlops.platform import home
from mlops.platform.context import current_binding as current_context

from .notebook_files import write_notebook

REPO = Path(__file__).resolve().parents[3]


def test_home_defaults_to_dot_mlops_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLOPS_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert home.mlops_home() == tmp_path / ".mlops"


def test_home_subfolders_and_mlflow_locations(mlops_home):
    assert home.dbfs_root() == mlops_home / "dbfs" and home.dbfs_root().is_dir()
    assert home.runs_dir() == mlops_home / "runs"
    assert home.tables_dir() == mlops_home / "tables"
    assert home.mlflow_artifact_root() == mlops_home / "mlartifacts"
    assert home.mlflow_tracking_uri() == f"sqlite:///{mlops_home}/mlflow.db"


def test_tracking_uri_from_environment_wins(mlops_home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert home.mlflow_tracking_uri() == "http://127.0.0.1:5000"


def test_run_ids_sort_by_start_time():
    first, second = home.new_run_id(), home.new_run_id()
    assert first != second and first[:18] <= second[:18]


def test_context_is_empty_outside_any_notebook():
    context = current_context()
    assert (context.job_name, context.job_run_id, context.task, context.notebook_path) == (
        None, None, None, None)


@pytest.mark.slow
def test_cli_in_a_fresh_process_starts_spark_from_the_environment(tmp_path):
    notebook = write_notebook(tmp_path / "conf.py", """
import json
conf = {key: spark.conf.get(key) for key in
        ("spark.sql.session.timeZone", "spark.sql.shuffle.partitions", "spark.master", "spark.ui.enabled")}
dbutils.notebook.exit(json.dumps(conf))
""")
    env = dict(os.environ, MLOPS_HOME=str(tmp_path / "home"), MLOPS_SPARK_MASTER="local[1]",
               MLOPS_SHUFFLE_PARTITIONS="3", MLOPS_DRIVER_MEMORY="1g",
               PYTHONPATH=os.pathsep.join([str(REPO / "ml_ops"), str(REPO / "ml_source")]))
    env.pop("SPARK_REMOTE", None)
    code = ("import argparse, sys\n"
            "from mlops.cli.runtime import register_cli\n"
            "parser = argparse.ArgumentParser()\n"
            "register_cli(parser.add_subparsers(dest='command', required=True))\n"
            "args = parser.parse_args(sys.argv[1:])\n"
            "sys.exit(args.func(args))\n")
    completed = subprocess.run([sys.executable, "-c", code, "notebook", "run", str(notebook)],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    exit_line = [line for line in completed.stdout.splitlines() if line.startswith("exit value: ")][-1]
    assert json.loads(exit_line[len("exit value: "):]) == {
        "spark.sql.session.timeZone": "UTC", "spark.sql.shuffle.partitions": "3",
        "spark.master": "local[1]", "spark.ui.enabled": "false"}
