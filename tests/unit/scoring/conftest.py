"""Scoring fixtures: a small trip set, a trained booster, a registered Champion and a scoring run."""
import contextlib
import datetime
import os
import types

import mlflow
import pytest

from support.azurite import azurite  # noqa: F401

MODEL_NAME = "taxi_fares_scoring_tests"
SCORING_START = datetime.date(2016, 2, 1)
SCORING_END = datetime.date(2016, 2, 7)
TRIPS = 3000


@pytest.fixture(scope="session")
def raw_trips_path(spark, tmp_path_factory):
    """Raw trips for the first week of February 2016, as Parquet."""
    from taxi_fares.data import generate_trips

    path = tmp_path_factory.mktemp("raw") / "trips"
    generate_trips(spark, TRIPS, SCORING_START, SCORING_END, seed=11).write.parquet(str(path))
    return path


@pytest.fixture(scope="session")
def feature_set(spark, raw_trips_path):
    """The point-in-time feature set of the raw trips, with actual fares."""
    from taxi_fares import features

    trips = features.clean_trips(spark.read.parquet(str(raw_trips_path)))
    return features.build_training_set(trips, features.pickup_zip_features(trips),
                                       features.dropoff_zip_features(trips)).cache()


@pytest.fixture(scope="session")
def feature_frame(feature_set):
    """The feature set as pandas: small, and the reference for raw LightGBM predictions."""
    return feature_set.toPandas()


def train_booster(feature_frame, rounds):
    from taxi_fares import features, training

    return training.train_model(feature_frame[list(features.FEATURE_COLUMNS)],
                                feature_frame[features.LABEL_COLUMN],
                                training.TrainingParams(num_rounds=rounds, num_leaves=15))


@pytest.fixture(scope="session")
def booster(feature_frame):
    return train_booster(feature_frame, rounds=20)


def register(booster, alias=None, name=MODEL_NAME, status="PASSED"):
    """Log ``booster`` as a new version of ``name`` in the current MLflow store, with a validation status."""
    from mlops.lifecycle.registry import RegistryClient

    with mlflow.start_run(experiment_id=_training_experiment()):
        info = mlflow.lightgbm.log_model(booster, name="model", registered_model_name=name,
                                         pip_requirements=mlflow.lightgbm.get_default_pip_requirements())
    version = str(info.registered_model_version)
    if status:
        RegistryClient(name).set_validation_status(version, status)
    if alias:
        RegistryClient(name).set_alias(alias, version)
    return version


def _training_experiment():
    experiment = mlflow.get_experiment_by_name("training")
    return experiment.experiment_id if experiment else mlflow.create_experiment("training")


@pytest.fixture(scope="module")
def model_store(tmp_path_factory, booster):
    """One MLflow store per module, with version 1 of MODEL_NAME aliased Champion.

    Tests that move aliases use a model name of their own, so version 1 stays Champion here.
    """
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        mlflow.create_experiment("training", artifact_location=(folder / "artifacts").as_uri())
        version = register(booster, alias="Champion")
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return uri, version


@pytest.fixture
def scoring_home(mlops_home, model_store, monkeypatch):
    """A fresh MLOPS_HOME on the module's MLflow store, with no storage credentials in the environment."""
    uri, _ = model_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield mlops_home
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def champion(scoring_home, model_store):
    """The version of MODEL_NAME that is Champion."""
    return model_store[1]


@pytest.fixture(scope="module")
def feature_tables(spark, raw_trips_path, tmp_path_factory):
    """The scoring feature tables of the test trips, built once per module."""
    from mlops.stages.feature_tables import SCORING, build_feature_tables
    from mlops.data.tables import TableStore

    location = tmp_path_factory.mktemp("tables")
    builder = types.SimpleNamespace(spark=spark, tables=TableStore(spark, str(location)))
    build_feature_tables(builder, str(raw_trips_path), SCORING_START, SCORING_END, SCORING, "scoring_data")
    return location


@pytest.fixture
def scoring_config(raw_trips_path, feature_tables):
    """Build a ScoringConfig for the test trips; keyword arguments override parameters.

    By default it scores the module's prebuilt feature tables (no feature engineering).
    """
    from mlops.config import ScoringConfig

    def build(**overrides):
        params = {"taxi_fares_raw_data": str(raw_trips_path), "registered_model_name": MODEL_NAME,
                  "scoring_data_start_date": str(SCORING_START), "scoring_data_end_date": str(SCORING_END),
                  "experiment_name": "scoring-tests", "blob_container": "scores", "blob_prefix": "batch",
                  "table_location": str(feature_tables), "execute_feature_engineering": "false"}
        params.update({name: str(value) for name, value in overrides.items()})
        return ScoringConfig.from_params(params)

    return build


@pytest.fixture
def scoring_run(spark):
    """Open the `score` task run of a config, as the notebook does (job run id ``job_run_id``)."""
    from mlops.local.dbutils import LocalDbutils
    from mlops.local.session import LocalSession
    from mlops.platform.context import RunContext, bind as notebook_context
    from mlops.orchestration import task_run

    @contextlib.contextmanager
    def open_run(config, job_run_id="scoring-run-1"):
        session = LocalSession(spark=spark, job_name="taxi_fares_batch_scoring", job_run_id=job_run_id)
        session.task_key = "score"
        dbutils = LocalDbutils(session)
        context = RunContext(job_name=session.job_name, job_run_id=job_run_id, task="score")
        with notebook_context(context), task_run("score", config, spark, dbutils) as run:
            yield run

    return open_run


def run_scoring_stages(run, before_upload=None):
    """The stages of the `score` notebook, in its order; returns (scored, published)."""
    from mlops.stages import scoring

    model = run.stage("resolve_model", scoring.resolve_model)
    with run.stage("check_publish_target", scoring.open_publish_target) as target:
        if target.publisher is not None:
            target.publisher.before_upload = before_upload
        if run.config.execute_feature_engineering:
            run.stage("feature_engineering", scoring.engineer_features)
        scored = run.stage("score", scoring.score_and_write, model)
        published = run.stage("publish", scoring.publish_predictions, scored, target)
        run.stage("summary", scoring.log_summary, scored, published)
    return scored, published
