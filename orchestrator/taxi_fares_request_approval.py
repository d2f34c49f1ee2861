# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: request approval
# MAGIC
# MAGIC Task `request_approval` of the job `taxi_fares_training`. It runs only when the `deploy`
# MAGIC task left the Challenger waiting for a human (`require_approval`), as the condition task
# MAGIC `approval_needed` decides. The task's `email_notifications.on_start`, set from the
# MAGIC environment's `approvers`, mails them a link to this run. Its output names the version,
# MAGIC the evidence, and the `mlops model approve` command.
# MAGIC
# MAGIC All logic lives in the `taxi_fares` and `taxi_fares_mlops` wheels; this notebook only wires.

# COMMAND ----------

dbutils.widgets.text("wheel_path", "dist", "wheel_path")
dbutils.widgets.text("wheel_version", "*", "wheel_version")
wheel_path, wheel_version = dbutils.widgets.get("wheel_path"), dbutils.widgets.get("wheel_version")

# COMMAND ----------

# MAGIC %pip install $wheel_path/taxi_fares-$wheel_version-py3-none-any.whl $wheel_path/taxi_fares_mlops-$wheel_version-py3-none-any.whl

# COMMAND ----------

from mlops.config import TrainingConfig
from mlops.orchestration import task_run
from mlops.stages.approval import request_approval

config = TrainingConfig.from_notebook(dbutils)

# COMMAND ----------

with task_run("request_approval", config, spark, dbutils, mlflow_run=False) as run:
    request = run.stage("approval_request", request_approval)
print(request or "no model version waits for approval")

# COMMAND ----------

dbutils.notebook.exit(request)
