# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: monitor the inference log
# MAGIC
# MAGIC Task `monitor` of the job `taxi_fares_monitoring`. It compares each window of the
# MAGIC inference log `predictions_table` (per model version) with the version's reference profile:
# MAGIC PSI, KS and Wasserstein drift per feature and for the prediction, and model quality where
# MAGIC labels exist. The metrics go to `<predictions_table>_profile_metrics` and `_drift_metrics`.
# MAGIC The decision goes out as the task value `retrain_required`, which the job's `check`
# MAGIC condition reads before `retrain` starts the training job.
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
from mlops.stages.monitoring import monitor_inference_log

config = MonitoringConfig.from_notebook(dbutils)

# COMMAND ----------

with task_run("monitor", config, spark, dbutils) as run:
    decision, report_uri = run.stage("monitor", monitor_inference_log)
print(decision.reason)
print(f"report: {report_uri}")

# COMMAND ----------

dbutils.notebook.exit("true" if decision.retrain_required else "false")
