"""Runs that are interrupted, abandoned or started twice end in a state that says so."""
import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from mlops.errors import JobError
from mlops.local.jobs import run_job
from mlops.platform import locks

from .notebook_files import JOBS, write_notebook

DIAMOND = JOBS / "diamond.json"


def slow_job(tmp_path, marker, spark_work=False):
    """A job whose first task opens a real task run and waits (in Spark, or not); the second depends on it."""
    write_notebook(tmp_path / "notebooks" / "slow.py", f"""
import pathlib, time
from mlops.config import TrainingConfig
from mlops.orchestration import task_run

config = TrainingConfig.from_params({{"experiment_name": "/Shared/interruptions"}})

def wait(run):
    pathlib.Path({str(marker)!r}).write_text(str(run.temp_dir))
    if {spark_work!r}:
        # A long Spark stage: a signal to the process group reaches the JVM mid-call.
        spark.range(0, 10 ** 12).selectExpr("sum(id)").collect()
    time.sleep(300)

with task_run("slow", config, spark, dbutils) as run:
    run.stage("wait", wait)
""")
    write_notebook(tmp_path / "notebooks" / "after.py", 'dbutils.notebook.exit("ran")')
    job = {"name": "interruptible", "max_concurrent_runs": 1, "tasks": [
        {"task_key": "slow", "notebook_task": {"notebook_path": "notebooks/slow"}},
        {"task_key": "after", "depends_on": [{"task_key": "slow"}],
         "notebook_task": {"notebook_path": "notebooks/after"}}]}
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.json").write_text(json.dumps(job))
    return tmp_path / "jobs" / "job.json"


def wait_for(path, process, seconds=240):
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the task never started: {process.communicate(timeout=30)}")
        time.sleep(0.2)


def start_slow_job(tmp_path, marker):
    """The slow job in its own process group, once its task is inside a Spark stage."""
    job_file = slow_job(tmp_path, marker, spark_work=True)
    environment = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", MLOPS_SPARK_MASTER="local[1]")
    process = subprocess.Popen([sys.executable, "-m", "mlops", "job", "run", str(job_file)],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    wait_for(marker, process)
    return process


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_mid_task_leaves_nothing_running(mlops_home, tmp_path):
    marker = tmp_path / "started"
    process = start_slow_job(tmp_path, marker)
    time.sleep(3)
    # As `timeout` and CI cancellations do: the whole group, Spark's JVM included.
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=120)

    assert process.returncode == 143, err[-3000:]
    assert "error: interrupted by SIGTERM" in err
    (record_file,) = (mlops_home / "runs").glob("*.json")
    record = json.loads(record_file.read_text())
    assert (record["state"], record["pid"]) == ("FAILED", None)
    assert record["tasks"]["slow"]["state"] == "FAILED"
    assert record["tasks"]["after"]["state"] == "UPSTREAM_FAILED"
    mlflow.set_tracking_uri(f"sqlite:///{mlops_home / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("/Shared/interruptions")
    statuses = mlflow.search_runs([experiment.experiment_id])["status"].tolist()
    assert statuses == ["FAILED"]
    assert not os.path.exists(marker.read_text()), "the task's temp folder was left behind"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_killed_with_sigkill_is_closed_by_the_next_run_with_its_mlflow_run_and_temp_folder(
        spark, mlops_home, tmp_path):
    marker = tmp_path / "started"
    process = start_slow_job(tmp_path, marker)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    temp_dir = marker.read_text()
    assert os.path.exists(temp_dir)

    lines = []
    assert run_job(DIAMOND, {}, progress=lines.append, spark=spark).state == "SUCCESS"

    mlflow.set_tracking_uri(f"sqlite:///{mlops_home / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("/Shared/interruptions")
    runs = mlflow.search_runs([experiment.experiment_id])
    assert runs["status"].tolist() == ["KILLED"]
    assert any(f"its MLflow run(s) {runs['run_id'][0]} KILLED" in line for line in lines), lines
    assert not os.path.exists(temp_dir), "the killed task's temp folder was left behind"


def test_a_second_run_of_a_job_limited_to_one_fails_naming_the_first(spark, mlops_home, tmp_path):
    slot = locks.lock_path(mlops_home / "locks", "job-diamond-slot-0")
    with locks.file_lock(slot) as held:
        assert held
        with pytest.raises(JobError, match=r"job 'diamond' already has 1 run\(s\) in progress "
                                           r"\(max_concurrent_runs 1\).*or pass --if-busy wait"):
            run_job(DIAMOND, {}, progress=lambda line: None, spark=spark)
    assert run_job(DIAMOND, {}, progress=lambda line: None, spark=spark).state == "SUCCESS"


def test_a_record_left_running_by_a_dead_process_is_closed_and_can_be_repaired(spark, mlops_home):
    lines = []
    failed = run_job(DIAMOND, {"fail_task": "left"}, progress=lines.append, spark=spark)
    gone = subprocess.Popen(["true"])
    gone.wait()
    saved = json.loads(failed.path.read_text())
    saved.update(state="RUNNING", pid=gone.pid)
    saved["tasks"]["combine"]["state"] = "RUNNING"
    failed.path.write_text(json.dumps(saved))

    repaired = run_job(DIAMOND, {"fail_task": "none"}, repair_run_id=failed.run_id, progress=lines.append,
                       spark=spark)

    assert any(f"run {failed.run_id} of job 'diamond' was left RUNNING by a process that is gone" in line
               for line in lines)
    assert repaired.state == "SUCCESS"
