"""Running job files: ordering, task values, failures, repair runs and validation."""
import json
from pathlib import Path

import pytest

from mlops.errors import JobError
from mlops.local.jobs import load_job, run_job
from mlops.platform.context import current_binding as current_context

from .notebook_files import JOBS, write_notebook

DIAMOND = JOBS / "diamond.json"


@pytest.fixture
def lines(mlops_home):
    """Progress lines of the job run, collected instead of printed."""
    return []


def test_diamond_runs_in_dependency_order_with_task_values(spark, lines):
    record = run_job(DIAMOND, {}, progress=lines.append, spark=spark)

    assert record.state == "SUCCESS"
    assert [line.split(" ... ")[0] for line in lines if "... started" in line] == [
        "[1/4] prepare", "[2/4] right", "[3/4] left", "[4/4] combine"]
    assert record.tasks["combine"]["task_values"] == {"total": 40}
    assert record.tasks["combine"]["exit_value"] == f"40 base=2 run={record.run_id}"
    end = next(index for index, line in enumerate(lines) if line.endswith(f"run record: {record.path}"))
    # A summary line per task follows, in run order.
    assert [line.split()[:2] for line in lines[end + 1:]] == [
        ["prepare", "SUCCESS"], ["right", "SUCCESS"], ["left", "SUCCESS"], ["combine", "SUCCESS"]]
    assert current_context().job_name is None


def test_run_record_contents(spark, lines, mlops_home):
    record = run_job(DIAMOND, {"factor": "5"}, progress=lines.append, spark=spark)

    saved = json.loads(record.path.read_text())
    assert record.path == mlops_home / "runs" / f"{record.run_id}.json"
    assert {key: saved[key] for key in ("run_id", "job_name", "parameters", "state", "repairs", "pid")} == {
        "run_id": record.run_id, "job_name": "diamond", "parameters": {"factor": "5"},
        "state": "SUCCESS", "repairs": [], "pid": None}
    assert saved["job_file"] == str(DIAMOND.resolve())
    assert saved["start_time"] <= saved["end_time"]
    left = saved["tasks"]["left"]
    # The job parameter wins over the task's own base parameter of the same name.
    assert left["parameters"] == {"side": "left", "factor": "5", "fail_task": "none"}
    assert left["state"] == "SUCCESS" and left["task_values"] == {"value": 10}
    assert left["duration_seconds"] >= 0 and left["notebook_path"].endswith("notebooks/branch.py")
    assert saved["tasks"]["combine"]["parameters"]["upstream_base"] == "2"
    assert [path.name for path in mlops_home.glob("runs/*.tmp")] == []


def test_failure_skips_downstream_tasks_and_fails_the_run(spark, lines, mlops_home):
    record = run_job(DIAMOND, {"fail_task": "left"}, progress=lines.append, spark=spark)

    assert record.state == "FAILED"
    assert {key: task["state"] for key, task in record.tasks.items()} == {
        "combine": "UPSTREAM_FAILED", "right": "SUCCESS", "left": "FAILED", "prepare": "SUCCESS"}
    error = record.tasks["left"]["error"]
    assert "branch.py failed in cell 2 (if dbutils.widgets.get(\"fail_task\") == side:)" in error
    assert error.endswith("RuntimeError: left was told to fail")
    traceback_file = mlops_home / "runs" / record.run_id / "left" / "error.txt"
    assert "RuntimeError: left was told to fail" in traceback_file.read_text()
    assert "[4/4] combine ... UPSTREAM_FAILED (upstream task left did not succeed)" in lines
    assert json.loads(record.path.read_text())["state"] == "FAILED"
    assert lines[-1] == (f"repair it (failed and skipped tasks only) with: mlops job run "
                         f"{DIAMOND.relative_to(Path.cwd())} --repair {record.run_id}")


def test_repair_reruns_only_failed_and_skipped_tasks(spark, lines, mlops_home):
    failed = run_job(DIAMOND, {"fail_task": "left"}, progress=lines.append, spark=spark)
    lines.clear()
    left_output = mlops_home / "runs" / failed.run_id / "left"

    repaired = run_job(DIAMOND, {"fail_task": "none", "factor": "1"}, repair_run_id=failed.run_id,
                       progress=lines.append, spark=spark)

    # As on Databricks, the repair belongs to the run: same run id, same record, a repair history.
    assert repaired.state == "SUCCESS" and repaired.run_id == failed.run_id
    saved = json.loads(failed.path.read_text())
    assert saved["state"] == "SUCCESS"
    assert [(repair["repair_id"], repair["state"], repair["tasks"]) for repair in saved["repairs"]] == [
        (1, "SUCCESS", ["left", "combine"])]
    assert [line.split(" ... ")[0] for line in lines if "... started" in line] == [
        "[1/2] left", "[2/2] combine"]
    assert lines[0] == f"job 'diamond' repair 1 of run {failed.run_id}: 2 of 4 tasks to run"
    # right kept its value from the failed run (factor 10); left re-ran with factor 1.
    assert saved["tasks"]["right"]["parameters"]["factor"] == "10"
    assert repaired.tasks["combine"]["task_values"] == {"total": 2 * 10 + 2 * 1}
    assert repaired.parameters == {"fail_task": "none", "factor": "1"}
    assert not (left_output / "error.txt").exists()
    assert "RuntimeError: left was told to fail" in (left_output / "error.repair-1.txt").read_text()


def test_a_run_whose_repair_succeeded_cannot_be_repaired_again(spark, lines):
    failed = run_job(DIAMOND, {"fail_task": "left"}, progress=lines.append, spark=spark)
    run_job(DIAMOND, {"fail_task": "none"}, repair_run_id=failed.run_id, progress=lines.append, spark=spark)
    expected = (f"^run {failed.run_id} of job 'diamond' was already repaired: repair 1 succeeded; "
                "nothing to repair$")
    with pytest.raises(JobError, match=expected):
        run_job(DIAMOND, {}, repair_run_id=failed.run_id, progress=lines.append, spark=spark)


def test_repair_of_a_successful_run_is_refused(spark, lines):
    done = run_job(DIAMOND, {}, progress=lines.append, spark=spark)
    with pytest.raises(JobError, match=f"run {done.run_id} of job 'diamond' has no failed or skipped tasks; "
                                       "nothing to repair"):
        run_job(DIAMOND, {}, repair_run_id=done.run_id, progress=lines.append, spark=spark)


def test_repair_of_an_unknown_run_lists_recent_runs(spark, lines):
    done = run_job(DIAMOND, {"fail_task": "right"}, progress=lines.append, spark=spark)
    with pytest.raises(JobError,
                       match=f"no run record for run id 'nope' in .*; recent run ids: {done.run_id}"):
        run_job(DIAMOND, {}, repair_run_id="nope", progress=lines.append)


def test_unknown_override_lists_valid_names(lines):
    with pytest.raises(JobError, match="job 'diamond' has no parameter 'factr'; valid names: base, factor, "
                                       "fail_task, run_id, side, upstream_base"):
        run_job(DIAMOND, {"factr": "2"}, progress=lines.append)


def test_task_override_reaches_only_tasks_that_declare_it(spark, lines):
    record = run_job(DIAMOND, {"base": "4"}, progress=lines.append, spark=spark)
    assert record.tasks["prepare"]["parameters"]["base"] == "4"
    assert "base" not in record.tasks["left"]["parameters"]
    assert record.tasks["combine"]["task_values"] == {"total": 80}


def test_job_context_is_visible_to_notebooks(spark, lines, tmp_path):
    write_notebook(tmp_path / "notebooks" / "who.py", """
import json
from mlops.platform.context import current_binding as current_context
dbutils.jobs.taskValues.set("context", vars(current_context()))
""")
    job_file = _job(tmp_path, {"name": "context", "tasks": [
        {"task_key": "who", "notebook_task": {"notebook_path": "notebooks/who"}}]})
    record = run_job(job_file, {}, progress=lines.append, spark=spark)
    assert record.tasks["who"]["task_values"]["context"] == {
        "job_name": "context", "job_run_id": record.run_id, "task": "who",
        "notebook_path": str(tmp_path / "notebooks" / "who.py")}


# ---------------------------------------------------------------- validation

def _job(tmp_path, settings) -> Path:
    folder = tmp_path / "jobs"
    folder.mkdir(exist_ok=True)
    path = folder / "job.json"
    path.write_text(json.dumps(settings) if not isinstance(settings, str) else settings)
    return path


def _notebook_task(key, depends_on=(), path="notebooks/task"):
    return {"task_key": key, "depends_on": [{"task_key": name} for name in depends_on],
            "notebook_task": {"notebook_path": path}}


@pytest.fixture
def task_notebook(tmp_path):
    return write_notebook(tmp_path / "notebooks" / "task.py", "x = 1")


def test_notebook_paths_resolve_against_repo_root_then_job_folder(tmp_path, task_notebook):
    write_notebook(tmp_path / "jobs" / "beside.py", "y = 2")
    job = load_job(_job(tmp_path, {"name": "paths", "tasks": [
        _notebook_task("root"), _notebook_task("beside", path="beside"),
        _notebook_task("absolute", path=str(task_notebook.with_suffix("")))]}))
    assert [task.notebook_path for task in job.tasks] == [
        task_notebook, tmp_path / "jobs" / "beside.py", task_notebook]


@pytest.mark.parametrize("settings, message", [
    ("{not json", r"is not valid JSON: Expecting property name"),
    ({"name": "empty", "tasks": []}, r"has no tasks"),
    ({"tasks": [_notebook_task("a", ["ghost"])]},
     r"task 'a' depends on unknown task 'ghost' \(tasks: a\)"),
    ({"tasks": [_notebook_task("a", ["c"]), _notebook_task("b", ["a"]), _notebook_task("c", ["b"])]},
     r"tasks depend on each other in a cycle: a -> c -> b -> a"),
    ({"tasks": [_notebook_task("a"), _notebook_task("a")]}, r"task_key a used more than once"),
    ({"tasks": [{"task_key": "py", "spark_python_task": {"python_file": "x.py"}}]},
     r"task .py. is a spark_python_task; the local runtime runs only notebook_task, condition_task and "
     r"run_job_task tasks"),
    ({"tasks": [_notebook_task("gone", path="notebooks/gone")]},
     r"task 'gone' notebook 'notebooks/gone' not found \(looked for .*notebooks/gone.py"),
    ({"tasks": [{"task_key": "n", "notebook_task": {"notebook_path": "notebooks/task",
                                                    "base_parameters": {"rows": 10}}}]},
     r"task 'n' parameter 'rows' must be a string \(Databricks passes widget values as strings\), got 10"),
    ({"tasks": [{"task_key": "n", "notebook_task": {"notebook_path": "notebooks/task",
                                                    "base_parameters": {"when": "{{job.trigger.time}}"}}}]},
     r"task 'n' uses '\{\{job.trigger.time\}\}', which the local runtime does not know \(supported: job.id"),
    ({"tasks": [{"task_key": "n", "notebook_task": {"notebook_path": "notebooks/task",
                                                    "base_parameters": {"e": "{{job.parameters.env}}"}}}]},
     r"task 'n' refers to job parameter 'env', which the job does not declare \(job parameters: none\)"),
    ({"tasks": [{"task_key": "n", "notebook_task": {"notebook_path": "notebooks/task",
                                                    "base_parameters": {"v": "{{tasks.ghost.values.x}}"}}}]},
     r"task 'n' refers to task values of unknown task 'ghost' in '\{\{tasks.ghost.values.x\}\}'"),
    ({"parameters": [{"name": "env"}], "tasks": [_notebook_task("a")]},
     r"job parameter \{'name': 'env'\} needs a 'name' and a 'default'"),
])
def test_invalid_job_files_are_rejected(tmp_path, task_notebook, settings, message):
    with pytest.raises(JobError, match=message):
        load_job(_job(tmp_path, settings))


def test_missing_job_file(tmp_path):
    with pytest.raises(JobError, match=r"job file .*absent.json does not exist"):
        load_job(tmp_path / "absent.json")
