# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: batch score
# MAGIC
# MAGIC Task `score` of the job `taxi_fares_batch_scoring`. Pins the model version once
# MAGIC (`trained_model_version`, else the version behind `model_alias`), checks the blob
# MAGIC target, builds the scoring feature tables (when `execute_feature_engineering` is true),
# MAGIC scores them on the executors, writes the predictions table partitioned by pickup date,
# MAGIC publishes its files to Azure Blob Storage with `_manifest.json` last, and logs a summary
# MAGIC to MLflow.
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
from mlops.stages.scoring import (engineer_features, log_summary, open_publish_target, publish_predictions,
                                  resolve_model, score_and_write)

config = ScoringConfig.from_notebook(dbutils)

# COMMAND ----------

with task_run("score", config, spark, dbutils) as run:
    model = run.stage("resolve_model", resolve_model)
    with run.stage("check_publish_target", open_publish_target) as target:
        if config.execute_feature_engineering:
            run.stage("feature_engineering", engineer_features)
        scored = run.stage("score", score_and_write, model)
        published = run.stage("publish", publish_predictions, scored, target)
        run.stage("summary", log_summary, scored, published)

# COMMAND ----------

dbutils.notebook.exit(published.url if published else run.tables.uri(config.predictions_table))
