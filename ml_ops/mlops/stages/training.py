"""Training job stages: feature engineering, then training and registration."""
import logging
from dataclasses import asdict

import mlflow
from mlflow.models import infer_signature
from taxi_fares import evaluation, features, training

from mlops.config import TrainingConfig
from mlops.lifecycle.registry import PENDING, ModelRef, RegistryClient
from mlops.observability import plots
from mlops.stages.feature_tables import (TRAINING, build_feature_tables, collect_split, lineage,
                                         load_feature_set, log_inputs)
from mlops.stages.run import TaskRun
from mlops.stages.tuning import TuningResult, choose_params


logger = logging.getLogger(__name__)


def engineer_features(run: TaskRun[TrainingConfig]):
    """Clean raw trips in the training range and write the training feature tables."""
    config = run.config
    return build_feature_tables(run, config.taxi_fares_raw_data, config.training_data_start_date,
                                config.training_data_end_date, TRAINING, "training_data",
                                config.online_store_path)


def load_training_set(run: TaskRun[TrainingConfig], start, end):
    """The point-in-time training set for trips picked up in [start, end]."""
    return load_feature_set(run.tables, start, end, TRAINING)


def train_and_register(run: TaskRun[TrainingConfig], tuned: TuningResult | None = None):
    """Train LightGBM on the feature tables, evaluate on held-out rows, log and register.

    The hyperparameters are ``tuned``'s, the Champion's tuned ones, or the job's (see ``choose_params``).
    """
    config = run.config
    chosen = choose_params(config, tuned)
    dataset = load_training_set(run, config.training_data_start_date, config.training_data_end_date)
    train, test, sampling = collect_split(dataset, config)
    feature_names = list(features.FEATURE_COLUMNS)
    label = features.LABEL_COLUMN
    # Float inputs let the model signature accept missing values at inference time.
    train_features = train[feature_names].astype("float64")
    test_features = test[feature_names].astype("float64")
    booster = training.train_model(train_features, train[label], chosen.params)
    mlflow.log_params({f"trained.{name}": value for name, value in asdict(chosen.params).items()})
    predictions = training.predict(booster, test_features)
    metrics = evaluation.regression_metrics(test[label].to_numpy(), predictions)
    metrics["baseline_rmse"] = evaluation.mean_baseline_rmse(train[label], test[label])
    metrics.update(train_rows=len(train), test_rows=len(test), rows_available=sampling["rows_available"])
    mlflow.log_metrics(metrics)
    log_inputs(run, TRAINING, context="training")
    mlflow.set_tags({f"lineage.{key}": value for key, value in lineage(run, TRAINING).items()})
    mlflow.set_tags({"lineage.training_range": f"{config.training_data_start_date}.."
                                               f"{config.training_data_end_date}",
                     "lineage.sample_fraction": f"{sampling['sample_fraction']:.6f}"})
    split_tags = {f"split.{key}": sampling[key] for key in ("train_range", "held_out_range", "gap_minutes")}
    split_tags |= {"split.train_rows": len(train), "split.held_out_rows": len(test)}
    mlflow.set_tags(split_tags)
    figure = plots.feature_importance_figure(evaluation.feature_importance(booster))
    mlflow.log_figure(figure, "feature_importance.png")
    plots.close(figure)
    example = train_features.head(5)
    info = mlflow.lightgbm.log_model(
        booster, name="model", signature=infer_signature(example, training.predict(booster, example)),
        input_example=example, registered_model_name=config.registered_model_name,
        # Naming the requirements skips MLflow's slow import-tracing inference.
        pip_requirements=mlflow.lightgbm.get_default_pip_requirements())
    model = ModelRef(config.registered_model_name, str(info.registered_model_version),
                     run_id=run.mlflow_run_id)
    # Tagged at once, so a version is never mistaken for one that was checked.
    registry = RegistryClient.from_config(config)
    registry.set_validation_status(model.version, PENDING)
    registry.set_tags(model.version, split_tags | chosen.tags)
    logger.info("registered %s version %s: rmse %.3f (baseline %.3f), r2 %.3f", model.name,
                model.version, metrics["rmse"], metrics["baseline_rmse"], metrics["r2"])
    run.annotate(model_version=model.version)
    for key, value in model.task_values().items():
        run.set_task_value(key, value)
    if chosen.description:
        logger.info("hyperparameters: %s", chosen.description)
        run.set_task_value("hyperparameters", chosen.description)
    return model
