"""Running source-format notebooks: cell kinds, globals, exit values, errors."""
import json

import pytest

from mlops.errors import ConfigError, NotebookError
from mlops.local.notebook import run_notebook
from mlops.local.notebook_source import parse_notebook
from mlops.local.session import LocalSession
from mlops.platform.context import current_binding as current_context

from .notebook_files import NOTEBOOKS, assert_cell_fails, write_notebook


@pytest.fixture
def session(spark, mlops_home):
    return LocalSession(spark=spark)


def test_parse_splits_cells_and_recognises_magics():
    cells = parse_notebook(NOTEBOOKS / "all_cells.py")
    assert [cell.kind for cell in cells] == ["md", "python", "run", "python", "sql", "sh", "python",
                                             "python", "python"]
    assert cells[2].body == "./helpers"
    assert cells[4].body.splitlines()[-1] == "SELECT count(*) AS number_count FROM all_cells_numbers"


def test_every_cell_kind_runs_and_exit_skips_the_rest(session, capsys):
    result = run_notebook(NOTEBOOKS / "all_cells.py", {}, session)

    assert result.exit_value == "HELLO!:red"
    assert result.task_values == {"shouted": "HELLO!"}
    out = capsys.readouterr().out
    assert "number_count" in out and "|           3|" in out      # %sql result displayed
    assert "shell says hi" in out                                 # %sh output
    assert "spark_preview" in out and "pandas_preview" in out     # display() previews
    assert "\n6\n" in out                                         # value of the cell's last expression
    html_files = list(session.output_dir.glob("displayHTML-*.html"))
    assert [path.read_text() for path in html_files] == ["<b>report</b>"]


def test_parameters_override_widget_defaults(session):
    result = run_notebook(NOTEBOOKS / "all_cells.py", {"greeting": "hi", "color": "green"}, session)
    assert result.exit_value == "HI!:green"


def test_dropdown_parameter_outside_choices_fails_the_cell(session):
    with pytest.raises(NotebookError, match=r"all_cells.py failed in cell 2 \(dbutils.widgets.text"
                                            r"\(\"greeting\".*value 'blue' for dropdown widget 'color' "
                                            r"is not one of its choices \['red', 'green'\]"):
        run_notebook(NOTEBOOKS / "all_cells.py", {"color": "blue"}, session)


def test_namespace_holds_exactly_the_databricks_globals(session):
    result = run_notebook(NOTEBOOKS / "namespace.py", {}, session)
    visible = json.loads(result.exit_value)["globals"]
    assert visible == ["current_context", "dbutils", "display", "displayHTML", "json", "spark"]


def test_current_context_names_the_notebook_outside_a_job(session):
    result = run_notebook(NOTEBOOKS / "namespace.py", {}, session)
    context = json.loads(result.exit_value)["context"]
    assert context == {"job_name": None, "job_run_id": None, "task": None,
                       "notebook_path": str(NOTEBOOKS / "namespace.py")}
    assert current_context().notebook_path is None


def test_failing_cell_names_notebook_cell_and_first_code_line(session):
    with pytest.raises(NotebookError) as caught:
        run_notebook(NOTEBOOKS / "failing.py", {}, session)
    assert str(caught.value).endswith(
        "failing.py failed in cell 2 (ratio = 1 / 0): ZeroDivisionError: division by zero")
    assert isinstance(caught.value.__cause__, ZeroDivisionError)
    frames = caught.value.__cause__.__traceback__
    while frames.tb_next:
        frames = frames.tb_next
    assert frames.tb_frame.f_code.co_filename == f"{NOTEBOOKS / 'failing.py'} [cell 2]"


def test_missing_header_is_rejected():
    with pytest.raises(NotebookError, match="not_a_notebook.py is not a Databricks source notebook: "
                                            "its first line must be '# Databricks notebook source'"):
        parse_notebook(NOTEBOOKS / "not_a_notebook.py")


def test_unsupported_magic_is_rejected_before_running(tmp_path):
    notebook = write_notebook(tmp_path / "scala.py", "x = 1", "# MAGIC %scala\n# MAGIC val x = 1")
    with pytest.raises(NotebookError, match=r"scala.py cell 2 \(line 6\) uses %scala, which the local "
                                            r"runtime does not run \(supported: %python, %pip"):
        parse_notebook(notebook)


def test_notebook_run_gives_the_child_fresh_widgets(session):
    result = run_notebook(NOTEBOOKS / "parent.py", {}, session)
    assert json.loads(result.exit_value) == {"number": "7"}


def test_notebook_run_of_a_missing_notebook_names_the_paths_tried(session, tmp_path):
    notebook = write_notebook(tmp_path / "caller.py", 'dbutils.notebook.run("./nowhere", 10)')
    with pytest.raises(NotebookError, match=r"notebook './nowhere' not found \(looked for .*nowhere.py"):
        run_notebook(notebook, {}, session)


def test_run_magic_cycle_is_reported(session, tmp_path):
    write_notebook(tmp_path / "first.py", "# MAGIC %run ./second")
    write_notebook(tmp_path / "second.py", "# MAGIC %run ./first.py")
    with pytest.raises(NotebookError, match=r"%run cycle: .*first.py -> .*second.py -> .*first.py"):
        run_notebook(tmp_path / "first.py", {}, session)


def test_run_magic_with_arguments_is_rejected(session, tmp_path):
    notebook = write_notebook(tmp_path / "args.py", '# MAGIC %run ./helpers $x="1"')
    with pytest.raises(NotebookError, match="passing widget values to %run is not supported locally"):
        run_notebook(notebook, {}, session)


def test_exit_inside_run_magic_ends_the_including_notebook(session, tmp_path):
    write_notebook(tmp_path / "stopper.py", 'dbutils.notebook.exit("stopped in include")')
    notebook = write_notebook(tmp_path / "main.py", "# MAGIC %run ./stopper",
                              'raise AssertionError("ran on")')
    assert run_notebook(notebook, {}, session).exit_value == "stopped in include"


def test_failing_sh_cell_reports_exit_code(session, tmp_path):
    assert_cell_fails(session, tmp_path / "shell.py", "# MAGIC %sh\n# MAGIC echo broken >&2; exit 3",
                      r"cell 1 \(%sh echo broken >&2; exit 3\): NotebookError: "
                      r"%sh exited with code 3: broken")


def test_sql_error_is_wrapped_with_the_cell(session, tmp_path):
    assert_cell_fails(session, tmp_path / "bad_sql.py",
                      "# MAGIC %sql\n# MAGIC SELECT * FROM no_such_table_here",
                      r"bad_sql.py failed in cell 1 \(%sql SELECT \* FROM no_such_table_here\): "
                      r"AnalysisException: .*no_such_table_here")


def test_display_saves_matplotlib_figures(session, tmp_path):
    notebook = write_notebook(tmp_path / "plot.py", """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

figure, axes = plt.subplots()
axes.plot([1, 2, 3])
display(figure)
""")
    run_notebook(notebook, {}, session)
    images = list(session.output_dir.glob("display-*.png"))
    assert len(images) == 1 and images[0].read_bytes()[:4] == b"\x89PNG"


def test_parameters_must_be_strings(session):
    with pytest.raises(ConfigError, match=r"notebook parameters must be strings, got \{'count': 3\}"):
        run_notebook(NOTEBOOKS / "failing.py", {"count": 3}, session)


def test_notebook_reads_a_secret_from_the_environment(session, monkeypatch):
    monkeypatch.setenv("MLOPS_SECRET_KV_TEST_API_KEY", "twelve-chars")
    result = run_notebook(NOTEBOOKS / "secret_check.py", {"expected_length": "12"}, session)
    assert result.exit_value == "secret read"


def test_notebook_missing_secret_names_the_variable(session, monkeypatch):
    monkeypatch.delenv("MLOPS_SECRET_KV_TEST_API_KEY", raising=False)
    with pytest.raises(NotebookError, match=r"secret_check.py failed in cell 1 .*ConfigError: Secret does "
                                            r"not "
                                            r"exist with scope: kv-test and key: api.key; locally, set the "
                                            r"environment variable MLOPS_SECRET_KV_TEST_API_KEY"):
        run_notebook(NOTEBOOKS / "secret_check.py", {}, session)
