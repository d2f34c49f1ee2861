# Databricks notebook source
# MAGIC %md
# MAGIC # Integration test: taxi fares training
# MAGIC
# MAGIC Runs the orchestrator notebook `taxi_fares_train` on a one-week slice with few boosting
# MAGIC rounds, then checks the model URI it returns and the version it registered.
# MAGIC
# MAGIC Parameters passed to this notebook are forwarded to the training notebook. The bundle's
# MAGIC job `taxi_fares_integration_tests` passes the target's parameters, so the test trains with
# MAGIC the deployed wheels, registry and tables; run without parameters, the training notebook's
# MAGIC defaults apply.
# MAGIC
# MAGIC The job's cluster gets the `nutter` PyPI library. A failed assertion fails the task, so
# MAGIC `databricks bundle run taxi_fares_integration_tests` fails; `nutter run` also collects the
# MAGIC results from a cluster.

# COMMAND ----------

import math

from mlflow.tracking import MlflowClient
from runtime.nutterfixture import NutterFixture, tag

TRAINING_NOTEBOOK = "../../orchestrator/taxi_fares_train"
TRAINING_TIMEOUT_SECONDS = 3600
# A short date range and few rounds keep the run to minutes on a small cluster.
SHORT_RUN = {
    "training_data_start_date": "2016-01-01",
    "training_data_end_date": "2016-01-07",
    "execute_feature_engineering": "true",
    "execute_training": "true",
    "training_num_rounds": "10",
    "training_sample_rows": "50000",
}

# COMMAND ----------

try:
    forwarded = dict(dbutils.widgets.getAll())
except AttributeError:
    # Runtimes without getAll(): run with the training notebook's defaults.
    forwarded = {}
parameters = {**forwarded, **SHORT_RUN}

# COMMAND ----------


class TaxiFaresTrainingFixture(NutterFixture):
    """Trains once in before_all; each assertion checks one property of the result."""

    def __init__(self, parameters):
        super().__init__()
        self.parameters = parameters
        self.model_uri = None
        self.model_version = None
        self.training_error = None

    def before_all(self):
        try:
            self.model_uri = dbutils.notebook.run(TRAINING_NOTEBOOK, TRAINING_TIMEOUT_SECONDS, self.parameters)
        except Exception as error:
            # Kept, not raised: an exception here would abort the fixture with no per-test results.
            self.training_error = error

    def _registered(self):
        if self.training_error is not None:
            raise AssertionError(f"the training notebook failed: {self.training_error}")
        prefix, _, reference = (self.model_uri or "").partition(":/")
        name, _, version = reference.rpartition("/")
        assert prefix == "models" and name and version.isdigit(), \
            f"expected the training notebook to exit with models:/<name>/<version>, got {self.model_uri!r}"
        return name, version

    def _client(self):
        return MlflowClient(registry_uri=self.parameters.get("registry_uri") or None)

    def assertion_training_returns_model_uri(self):
        name, _ = self._registered()
        expected = self.parameters.get("registered_model_name")
        assert not expected or name == expected, f"registered {name!r}, expected {expected!r}"

    @tag("registry")
    def run_registered_version_is_ready(self):
        name, version = self._registered()
        self.model_version = self._client().get_model_version(name, version)

    def assertion_registered_version_is_ready(self):
        status = self.model_version.status
        assert status == "READY", f"{self.model_uri} has status {status}"

    def assertion_registered_version_has_finite_metrics(self):
        name, version = self._registered()
        run_id = self._client().get_model_version(name, version).run_id
        metrics = MlflowClient().get_run(run_id).data.metrics
        for metric in ("rmse", "r2"):
            assert metric in metrics and math.isfinite(metrics[metric]), \
                f"training run {run_id} lacks a finite {metric}: {metrics}"
        assert metrics["rmse"] > 0, f"rmse {metrics['rmse']} must be positive on held-out rows"


# COMMAND ----------

result = TaxiFaresTrainingFixture(parameters).execute_tests()
print(result.to_string())
failed = [item.test_name for item in result.test_results.results if not item.passed]
if failed:
    # A job run must end FAILED when a test fails; `exit` alone would end it SUCCESS.
    raise AssertionError(f"integration tests failed: {', '.join(failed)}\n{result.to_string()}")
result.exit(dbutils)
