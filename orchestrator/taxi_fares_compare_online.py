# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: compare the Challenger with the Champion online
# MAGIC
# MAGIC Task `compare_online` of the job `taxi_fares_monitoring`. It reads the labelled rows of the
# MAGIC inference log `predictions_table` that each arm answered (`champion`, `challenger`, or
# MAGIC `shadow` pairs, where both versions scored the same trips) over the monitored range, and
# MAGIC says whether the Challenger is no worse than the Champion (promote), worse (keep the
# MAGIC Champion), or that more labelled rows are needed, and how many. The verdict goes out as the
# MAGIC task value `online_verdict`, with the evidence in `online_comparison`. With `rollout_plan`
# MAGIC set, it then moves the Challenger's rollout by the verdict: start, hold, step up, roll back
# MAGIC or promote (task values `rollout_action`, `rollout_share`, `rollout_reason`).
# MAGIC
# MAGIC All logic lives in the `taxi_fares` and `taxi_fares_mlops` wheels; this notebook only wires.

# COMMAND ----------

dbutils.widgets.text("wheel_path", "dist", "wheel_path")
dbutils.widgets.text("wheel_version", "*", "wheel_version")
wheel_path, wheel_version = dbutils.widgets.get("wheel_path"), dbutils.widgets.get("wheel_version")

# COMMAND ----------

# MAGIC %pip install $wheel_path/taxi_fares-$wheel_version-py3-none-any.whl $wheel_path/taxi_fares_mlops-$wheel_version-py3-none-any.whl

# COMMAND ----------

from mlops.config import MonitoringConfig
from mlops.orchestration import task_run
from mlops.stages.online_comparison import NO_CHALLENGER, compare_online_arms
from mlops.stages.rollout import advance_rollout

# COMMAND ----------

# The comparison reads the monitoring job's own parameters: its range, model and log.
with task_run("compare_online", MonitoringConfig.from_notebook(dbutils), spark, dbutils) as run:
    comparison = run.stage("compare_online", compare_online_arms)
    rollout = run.stage("rollout", advance_rollout, comparison)
verdict = comparison.verdict if comparison is not None else NO_CHALLENGER
print(comparison.line() if comparison is not None else "no Challenger: nothing to compare online")
print(f"rollout: {rollout.action} at {rollout.share}%: {rollout.reason}")

# COMMAND ----------

dbutils.notebook.exit(verdict)
