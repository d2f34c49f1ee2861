# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: streaming score
# MAGIC
# MAGIC Task `stream_score` of the job `taxi_fares_streaming`. Reads new raw trips as they arrive
# MAGIC at `taxi_fares_stream_source` (Auto Loader on a volume folder, or a Delta table), and for
# MAGIC each micro-batch: stores the trips, refreshes the zip windows they fall in, scores them with
# MAGIC the version `model_alias` names when the batch starts (only a PASSED one), MERGEs them into
# MAGIC the inference log `predictions_table` exactly once, and publishes the online snapshot.
# MAGIC `stream_trigger` is `available_now` (score what has arrived, then stop) or
# MAGIC `processing_time` (every `trigger_interval_seconds`). The checkpoint lives under
# MAGIC `checkpoint_location`, one per target table.
# MAGIC
# MAGIC All logic lives in the `taxi_fares` and `taxi_fares_mlops` wheels; this notebook only wires.

# COMMAND ----------

dbutils.widgets.text("wheel_path", "dist", "wheel_path")
dbutils.widgets.text("wheel_version", "*", "wheel_version")
wheel_path, wheel_version = dbutils.widgets.get("wheel_path"), dbutils.widgets.get("wheel_version")

# COMMAND ----------

# MAGIC %pip install $wheel_path/taxi_fares-$wheel_version-py3-none-any.whl $wheel_path/taxi_fares_mlops-$wheel_version-py3-none-any.whl

# COMMAND ----------

from mlops.config import StreamingConfig
from mlops.orchestration import task_run
from mlops.stages.streaming import score_stream

config = StreamingConfig.from_notebook(dbutils)

# COMMAND ----------

with task_run("stream_score", config, spark, dbutils) as run:
    summary = run.stage("stream", score_stream)

# COMMAND ----------

dbutils.notebook.exit(str(summary.rows))
