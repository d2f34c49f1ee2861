"""Condition tasks, dynamic references and kept task output in a local job run."""
import json

import pytest

from mlops.errors import JobError
from mlops.local.jobs import EXCLUDED, SUCCESS, run_job

from .notebook_files import NOTEBOOKS


def gated_job(tmp_path, op="GREATER_THAN", right="3"):
    """prepare sets base; 'big' compares it with ``right``; the 'when_*' tasks follow its outcome."""
    job = {"name": "gated", "parameters": [{"name": "base", "default": "5"}], "tasks": [
        {"task_key": "prepare", "notebook_task": {"notebook_path": str(NOTEBOOKS / "prepare"),
                                                  "base_parameters": {"base": "{{job.parameters.base}}"}}},
        {"task_key": "big", "depends_on": [{"task_key": "prepare"}],
         "condition_task": {"op": op, "left": "{{tasks.prepare.values.base}}", "right": right}},
        {"task_key": "when_true", "depends_on": [{"task_key": "big", "outcome": "true"}],
         "notebook_task": {"notebook_path": str(NOTEBOOKS / "prepare"), "base_parameters": {}}},
        {"task_key": "after_true", "depends_on": [{"task_key": "when_true"}],
         "notebook_task": {"notebook_path": str(NOTEBOOKS / "prepare"), "base_parameters": {}}},
        {"task_key": "when_false", "depends_on": [{"task_key": "big", "outcome": "false"}],
         "notebook_task": {"notebook_path": str(NOTEBOOKS / "prepare"), "base_parameters": {}}},
    ]}
    path = tmp_path / "gated.json"
    path.write_text(json.dumps(job))
    return path


def states(record):
    return {key: entry["state"] for key, entry in record.tasks.items()}


@pytest.mark.parametrize("base, taken, skipped", [("5", ["when_true", "after_true"], ["when_false"]),
                                                  ("2", ["when_false"], ["when_true", "after_true"])])
def test_one_branch_runs_and_the_other_is_excluded(spark, mlops_home, tmp_path, base, taken, skipped):
    lines = []
    record = run_job(gated_job(tmp_path), {"base": base}, progress=lines.append, spark=spark)
    assert record.state == SUCCESS
    assert all(states(record)[key] == SUCCESS for key in ["prepare", "big", *taken])
    assert all(states(record)[key] == EXCLUDED for key in skipped)
    outcome = "true" if base == "5" else "false"
    assert record.tasks["big"]["outcome"] == outcome
    assert f"[2/5] big ... condition '{base}' GREATER_THAN '3' is {outcome}" in lines


def test_numbers_compare_as_numbers_and_text_as_text(spark, mlops_home, tmp_path):
    record = run_job(gated_job(tmp_path, right="10"), {"base": "9"}, progress=[].append, spark=spark)
    assert record.tasks["big"]["outcome"] == "false"
    record = run_job(gated_job(tmp_path, op="EQUAL_TO", right="9.0"), {"base": "9"}, progress=[].append,
                     spark=spark)
    assert record.tasks["big"]["outcome"] == "true"


def test_a_malformed_condition_is_rejected_naming_the_task(tmp_path, mlops_home):
    with pytest.raises(JobError, match="task 'big' condition_task needs 'left' and 'right' strings and an "
                                       "'op' among EQUAL_TO"):
        run_job(gated_job(tmp_path, op="ABOUT"), {})


def test_a_start_time_reference_in_an_override_is_resolved(spark, mlops_home, tmp_path):
    record = run_job(gated_job(tmp_path), {"base": "{{job.start_time.timestamp}}"}, progress=[].append,
                     spark=spark)
    assert record.tasks["prepare"]["parameters"]["base"].isdigit()
    assert record.tasks["big"]["outcome"] == "true"


def test_an_unknown_reference_in_an_override_is_refused_before_the_run(tmp_path, mlops_home):
    with pytest.raises(JobError, match=r"parameter 'base' uses '\{\{job.trigger.time\}\}', which the local "
                                       r"runtime does not know \(supported: job.id"):
        run_job(gated_job(tmp_path), {"base": "{{job.trigger.time}}"})
    assert not list((mlops_home / "runs").glob("*.json"))


def test_each_task_keeps_what_it_printed_and_logged(spark, mlops_home, tmp_path, monkeypatch):
    from .notebook_files import write_notebook

    monkeypatch.setenv("MLOPS_SECRET_KV_TOKEN", "s3cr3t-value-never-kept")
    notebook = write_notebook(tmp_path / "talk.py", "import logging\n"
                              "print('hello from', dbutils.widgets.get('who'))\n"
                              "logging.getLogger('mlops.talk').warning('careful with %s', "
                              "dbutils.secrets.get('kv', 'token'))")
    job = tmp_path / "talk.json"
    job.write_text(json.dumps({"name": "talk", "tasks": [
        {"task_key": "talk", "notebook_task": {"notebook_path": str(notebook),
                                               "base_parameters": {"who": "the task"}}}]}))
    record = run_job(job, {}, progress=[].append, spark=spark)
    kept = (mlops_home / "runs" / record.run_id / "talk" / "output.txt").read_text()
    assert "hello from the task" in kept
    assert "WARNING mlops.talk: careful with " in kept
    assert "s3cr3t-value-never-kept" not in kept


# ---------------------------------------------------------------- run_if and run_job_task

def write_job(folder, settings):
    path = folder / f"{settings['name']}.json"
    path.write_text(json.dumps(settings))
    return path


def prepare_task(key, base="5", depends_on=(), **extra):
    return {"task_key": key, "depends_on": [{"task_key": name} for name in depends_on],
            "notebook_task": {"notebook_path": str(NOTEBOOKS / "prepare"), "base_parameters": {"base": base}},
            **extra}


def test_run_if_lets_a_task_run_after_a_failed_upstream_task(spark, mlops_home, tmp_path):
    job = write_job(tmp_path, {"name": "cleanup", "tasks": [
        prepare_task("breaks", base="not a number"),
        prepare_task("always", depends_on=["breaks"], run_if="ALL_DONE"),
        prepare_task("on_failure", depends_on=["breaks"], run_if="AT_LEAST_ONE_FAILED"),
        prepare_task("normal", depends_on=["breaks"]),
        prepare_task("none_failed", depends_on=["breaks"], run_if="NONE_FAILED")]})

    record = run_job(job, {}, progress=[].append, spark=spark)

    assert states(record) == {"breaks": "FAILED", "always": SUCCESS, "on_failure": SUCCESS,
                              "normal": "UPSTREAM_FAILED", "none_failed": "UPSTREAM_FAILED"}
    assert record.state == "FAILED"


def test_run_if_at_least_one_failed_is_excluded_when_all_succeed(spark, mlops_home, tmp_path):
    job = write_job(tmp_path, {"name": "quiet", "tasks": [
        prepare_task("fine"), prepare_task("on_failure", depends_on=["fine"], run_if="AT_LEAST_ONE_FAILED")]})

    record = run_job(job, {}, progress=[].append, spark=spark)

    assert states(record) == {"fine": SUCCESS, "on_failure": EXCLUDED}
    assert record.state == SUCCESS
    assert record.tasks["on_failure"]["error"] == \
        "not run: run_if AT_LEAST_ONE_FAILED: no upstream task failed"


def child_and_parent(tmp_path, op="EQUAL_TO"):
    write_job(tmp_path, {"name": "child_job", "parameters": [{"name": "base", "default": "1"},
                                                             {"name": "label", "default": "child"}],
                         "tasks": [prepare_task("inner", base="{{job.parameters.base}}")]})
    return write_job(tmp_path, {"name": "parent_job", "parameters": [{"name": "label", "default": "parent"}],
                                "tasks": [
        prepare_task("decide", base="7"),
        {"task_key": "check", "depends_on": [{"task_key": "decide"}],
         "condition_task": {"op": op, "left": "{{tasks.decide.values.base}}", "right": "7"}},
        {"task_key": "start_child", "depends_on": [{"task_key": "check", "outcome": "true"}],
         "run_job_task": {"job_id": "${resources.jobs.child_job.id}",
                          "job_parameters": {"base": "{{tasks.decide.values.base}}",
                                             "label": "{{job.parameters.label}}"}}}]})


def test_run_job_task_runs_the_named_job_with_its_parameters(spark, mlops_home, tmp_path):
    lines = []
    record = run_job(child_and_parent(tmp_path), {}, progress=lines.append, spark=spark)

    entry = record.tasks["start_child"]
    child = json.loads((mlops_home / "runs" / f"{entry['child_run_id']}.json").read_text())
    assert record.state == SUCCESS and entry["state"] == SUCCESS
    assert entry["job_parameters"] == {"base": "7", "label": "parent"}
    assert child["job_name"] == "child_job" and child["parameters"] == {"base": "7", "label": "parent"}
    assert child["tasks"]["inner"]["task_values"] == {"base": 7}
    assert any(line.startswith("    job 'child_job' run") for line in lines)


def test_a_false_condition_skips_the_child_job_and_the_run_succeeds(spark, mlops_home, tmp_path):
    record = run_job(child_and_parent(tmp_path, op="NOT_EQUAL"), {}, progress=[].append, spark=spark)

    assert states(record) == {"decide": SUCCESS, "check": SUCCESS, "start_child": EXCLUDED}
    assert record.state == SUCCESS
    assert "child_run_id" not in record.tasks["start_child"]


@pytest.mark.parametrize("task, message", [
    ({"run_job_task": {"job_id": 12}},
     r"run_job_task job_id must be the reference \$\{resources.jobs.<job key>.id\}"),
    ({"run_job_task": {"job_id": "${resources.jobs.ghost.id}"}},
     r"no job named 'ghost' in .* \(jobs there: bad\)"),
    ({"run_if": "SOMETIMES", "run_job_task": {}}, r"run_if 'SOMETIMES' is not one of ALL_SUCCESS, ALL_DONE"),
])
def test_bad_run_job_and_run_if_settings_are_rejected(tmp_path, mlops_home, task, message):
    job = write_job(tmp_path, {"name": "bad", "tasks": [{"task_key": "t", **task}]})
    with pytest.raises(JobError, match=message):
        run_job(job, {})
