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
