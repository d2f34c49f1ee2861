# Databricks notebook source
# MAGIC %md
# MAGIC # Taxi fares: train
# MAGIC
# MAGIC Task `train` of the job `taxi_fares_training`. Builds the feature tables (when
# MAGIC `execute_feature_engineering` is true), tunes the hyperparameters (when `execute_tuning`
# MAGIC is true: an Optuna study whose trials run on the cluster), trains the LightGBM fare model, logs it to
# MAGIC MLflow and registers a new version of `registered_model_name`. Passes the model
# MAGIC name, version and URI on to the next task through task values.
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
from mlops.stages.training import engineer_features, train_and_register
from mlops.stages.tuning import tune_hyperparameters

config = TrainingConfig.from_notebook(dbutils)

# COMMAND ----------

with task_run("train", config, spark, dbutils) as run:
    if config.execute_feature_engineering:
        run.stage("feature_engineering", engineer_features)
    tuned = run.stage("tuning", tune_hyperparameters) if config.execute_tuning else None
    if config.execute_training:
        model = run.stage("training", train_and_register, tuned)

# COMMAND ----------

dbutils.notebook.exit(model.uri if config.execute_training else "")
