# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: validate
# MAGIC
# MAGIC Task `validate` of the job `taxi_fares_training`. Validates the model version that the
# MAGIC `train` task registered (or the one named by the `model_version` parameter, for reruns):
# MAGIC tag `model_validation_status` PENDING, then format, metric threshold, slice and prediction
# MAGIC sanity checks on the held-out rows. PASSED sets the alias `Challenger`; FAILED fails the
# MAGIC task, so `deploy` does not run. Skipped when `execute_validation` is false.
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
from mlops.stages.validation import validate_model

config = TrainingConfig.from_notebook(dbutils)

# COMMAND ----------

with task_run("validate", config, spark, dbutils, mlflow_run=config.execute_validation) as run:
    if config.execute_validation:
        report = run.stage("validation", validate_model)

# COMMAND ----------

dbutils.notebook.exit(report.status if config.execute_validation else "")
