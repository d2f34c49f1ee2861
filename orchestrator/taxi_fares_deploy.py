# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: deploy
# MAGIC
# MAGIC Task `deploy` of the job `taxi_fares_training`. Compares the version that `validate`
# MAGIC passed (or the one named by the `model_version` parameter, for reruns) with the current
# MAGIC `Champion` on the same held-out rows, or with the fare heuristic when there is no Champion,
# MAGIC and moves the `Champion` alias to it when it is better. With `require_approval` the
# MAGIC decision waits for `mlops model approve`. Skipped when `execute_deployment` is false.
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
from mlops.stages.promotion import DECISION_TAG, SKIPPED, promote_challenger

config = TrainingConfig.from_notebook(dbutils)

# COMMAND ----------

with task_run("deploy", config, spark, dbutils, mlflow_run=config.execute_deployment) as run:
    if config.execute_deployment:
        decision = run.stage("promotion", promote_challenger)
    else:
        # The condition task `approval_needed` reads this value, so it is set even when skipped.
        run.set_task_value(DECISION_TAG, SKIPPED)

# COMMAND ----------

dbutils.notebook.exit(decision.decision if config.execute_deployment else "")
