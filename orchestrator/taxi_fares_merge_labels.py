# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: merge late labels
# MAGIC
# MAGIC Task `merge_labels` of the job `taxi_fares_batch_scoring`, after `score`. When
# MAGIC `execute_label_merge` is true, fares that became known after scoring (the table
# MAGIC `labels_table`: `request_id`, `fare_amount`) fill the `label` of the inference log
# MAGIC `predictions_table`, by `request_id`, for every model version. On Databricks this is
# MAGIC one `MERGE INTO`; a rerun changes nothing.
# MAGIC
# MAGIC All logic lives in the `taxi_fares` and `taxi_fares_mlops` wheels; this notebook only wires.

# COMMAND ----------

dbutils.widgets.text("wheel_path", "dist", "wheel_path")
dbutils.widgets.text("wheel_version", "*", "wheel_version")
wheel_path, wheel_version = dbutils.widgets.get("wheel_path"), dbutils.widgets.get("wheel_version")

# COMMAND ----------

# MAGIC %pip install $wheel_path/taxi_fares-$wheel_version-py3-none-any.whl $wheel_path/taxi_fares_mlops-$wheel_version-py3-none-any.whl

# COMMAND ----------

from mlops.config import ScoringConfig
from mlops.orchestration import task_run
from mlops.stages.labels import merge_labels

config = ScoringConfig.from_notebook(dbutils)

# COMMAND ----------

counts = {}
if config.execute_label_merge:
    with task_run("merge_labels", config, spark, dbutils) as run:
        counts = run.stage("merge_labels", merge_labels)
print(counts or "execute_label_merge is false: labels were not merged")

# COMMAND ----------

dbutils.notebook.exit(str(counts.get("rows_labelled_after", "")))
