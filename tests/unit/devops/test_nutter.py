"""Nutter integration-test notebooks: the fixture mechanics here, and the notebooks' format and logic."""
import ast
import shutil

import pytest
from common.api import to_testresults
from runtime.nutterfixture import NutterFixture, tag

from .conftest import REPO_ROOT

NUTTER_DIR = REPO_ROOT / "tests" / "nutter"
NOTEBOOKS = sorted(path for path in NUTTER_DIR.glob("*.py") if path.name != "conftest.py")
HEADER = "# Databricks notebook source\n"
SEPARATOR = "\n\n# COMMAND ----------\n\n"


class ArithmeticFixture(NutterFixture):
    """A fixture that runs in plain Python: one passing and one failing test case."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def before_all(self):
        self.calls.append("before_all")
        self.total = 0

    @tag("fast")
    def run_addition(self):
        self.calls.append("run_addition")
        self.total = 2 + 2

    def assertion_addition(self):
        assert self.total == 4

    def assertion_subtraction(self):
        assert 2 - 2 == 1, "two minus two is not one"

    def after_all(self):
        self.calls.append("after_all")


def test_nutter_fixture_runs_in_plain_python():
    fixture = ArithmeticFixture()
    result = fixture.execute_tests()
    outcomes = {case.test_name: case.passed for case in result.test_results.results}
    assert outcomes == {"addition": True, "subtraction": False}
    assert fixture.calls == ["before_all", "run_addition", "after_all"]
    failure = next(case for case in result.test_results.results if not case.passed)
    assert "two minus two is not one" in failure.stack_trace
    assert next(case for case in result.test_results.results if case.passed).tags == ["fast"]
    assert "addition" in result.to_string()


def test_the_exit_value_is_what_the_nutter_cli_parses():
    result = ArithmeticFixture().execute_tests()
    parsed = to_testresults(result.test_results.serialize())
    outcomes = [(case.test_name, case.passed) for case in parsed.results]
    assert outcomes == [("addition", True), ("subtraction", False)]
    assert not parsed.passed()


def test_tag_only_decorates_run_methods():
    with pytest.raises(ValueError, match="a tag may only decorate a run_ method"):
        tag("x")(lambda: None)


def test_there_are_nutter_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_nutter_notebook_is_a_databricks_source_notebook(path):
    text = path.read_text()
    assert text.startswith(HEADER), f"{path.name} must start with '{HEADER.strip()}'"
    cells = text[len(HEADER):].split(SEPARATOR)
    assert len(cells) >= 2, f"{path.name} has no '# COMMAND ----------' separators between blank lines"
    for number, cell in enumerate(cells, 1):
        assert cell.strip(), f"{path.name} cell {number} is empty"
        assert "# COMMAND ----------" not in cell, f"{path.name} cell {number}: separator without blank lines"
        lines = cell.strip("\n").splitlines()
        magic = [line.startswith("# MAGIC") for line in lines]
        assert all(magic) or not any(magic), f"{path.name} cell {number} mixes magic and Python lines"
        if not any(magic):
            ast.parse(cell, filename=f"{path.name} cell {number}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_nutter_notebook_is_discoverable_and_reports_its_results(path):
    text = path.read_text()
    # `nutter run` picks up notebooks named test_* or *_test.
    assert path.stem.startswith("test_") or path.stem.endswith("_test")
    assert "from runtime.nutterfixture import NutterFixture" in text
    assert text.rstrip().endswith("result.exit(dbutils)")
    # As a job task (the bundle's integration test job), a failed assertion must fail the run.
    assert "raise AssertionError" in text


# A stand-in for orchestrator/taxi_fares_train: it logs metrics and registers a version in the
# real MLflow store the test points at, so the Nutter notebook's own logic is what is tested.
STAND_IN_TRAINING = '''# Databricks notebook source
import json

import mlflow
from mlflow.tracking import MlflowClient

parameters = dbutils.widgets.getAll()
name = parameters.get("registered_model_name", "taxi_fares")

# COMMAND ----------

with mlflow.start_run() as run:
    mlflow.log_metrics({"rmse": 3.2, "r2": 0.71})
    mlflow.log_dict(parameters, "parameters.json")
client = MlflowClient()
if not client.search_registered_models(f"name = '{name}'"):
    client.create_registered_model(name)
version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
dbutils.notebook.exit(EXIT_VALUE)
'''


def run_nutter_notebook(tmp_path, monkeypatch, spark, exit_value, parameters):
    import mlflow

    from mlops.local.notebook import run_notebook
    from mlops.local.session import LocalSession

    # Artifacts of the stand-in's run go under tmp_path, not ./mlruns of the working directory. An
    # environment variable rather than set_experiment(), so no active experiment outlives the test.
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", mlflow.create_experiment(
        "nutter", artifact_location=(tmp_path / "artifacts").as_uri()))

    (tmp_path / "tests" / "nutter").mkdir(parents=True)
    (tmp_path / "orchestrator").mkdir()
    notebook = tmp_path / "tests" / "nutter" / "test_taxi_fares_train.py"
    shutil.copy(NUTTER_DIR / "test_taxi_fares_train.py", notebook)
    (tmp_path / "orchestrator" / "taxi_fares_train.py").write_text(
        STAND_IN_TRAINING.replace("EXIT_VALUE", exit_value))
    result = run_notebook(notebook, parameters, LocalSession(spark=spark))
    return to_testresults(result.exit_value)


@pytest.mark.slow
def test_training_notebook_test_passes_when_a_version_is_registered(tmp_path, monkeypatch, spark,
                                                                    mlflow_tracking, mlops_home):
    import mlflow

    results = run_nutter_notebook(tmp_path, monkeypatch, spark, 'f"models:/{name}/{version.version}"',
                                  {"registered_model_name": "nutter_check", "env": "dev"})
    assert {case.test_name: case.passed for case in results.results} == {
        "training_returns_model_uri": True, "registered_version_is_ready": True,
        "registered_version_has_finite_metrics": True}
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    received = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/parameters.json")
    # Parameters passed to the test are forwarded; the short-run overrides win.
    assert received["registered_model_name"] == "nutter_check" and received["env"] == "dev"
    assert received["training_data_end_date"] == "2016-01-07" and received["training_num_rounds"] == "10"


@pytest.mark.slow
def test_training_notebook_test_fails_the_task_with_a_reason_when_no_model_comes_back(
        tmp_path, monkeypatch, spark, mlflow_tracking, mlops_home):
    from mlops.errors import NotebookError

    with pytest.raises(NotebookError) as raised:
        run_nutter_notebook(tmp_path, monkeypatch, spark, '""', {})
    reason = str(raised.value.__cause__)
    failed = reason.split("integration tests failed: ", 1)[1].splitlines()[0].split(", ")
    assert sorted(failed) == ["registered_version_has_finite_metrics", "registered_version_is_ready",
                              "training_returns_model_uri"]
    assert "expected the training notebook to exit with models:/<name>/<version>, got ''" in reason
