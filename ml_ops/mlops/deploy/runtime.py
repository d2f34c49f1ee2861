"""The Databricks Runtime the jobs run on, and the versions of what it ships that we depend on.

Databricks Runtime 18 LTS ML is the first LTS with Spark 4 and MLflow 3, which the code needs
(MLflow 3 registration by ``name=`` and LoggedModels; the Spark Connect API surface). The
local environment pins the same Spark and MLflow (``requirements-dev.txt``), so that a model
logged locally asks for what the cluster has.
"""
SPARK_VERSION_KEY = "18.0.x-cpu-ml-scala2.13"
# From Databricks' runtime compatibility matrix for 18 LTS.
LIBRARIES = {"pyspark": "4.1.0", "mlflow": "3.8.1"}
