"""Stage ``tuning`` of task ``train``: an Optuna study of the fare model's hyperparameters, trials on Spark.

The study is MLflow's Spark study (``mlflow.pyspark.optuna``): its trials run in Spark tasks,
``tuning_parallelism`` at a time, and it lives in the tracking server as a run whose child
runs are the trials, so a rerun with the same study name continues it. Trials fit on the
start of the training part and are judged on its end, cut off by the held-out gap: the
held-out rows that validation and promotion judge on never reach the tuner.
"""
import contextlib
import dataclasses
import json
import logging
import time
import warnings
from dataclasses import dataclass

import mlflow
import optuna
from taxi_fares import features, training
from taxi_fares.training import TrainingParams
from taxi_fares.tuning import TUNABLE, SearchSpace

from mlops.config import TrainingConfig
from mlops.errors import ConfigError, DataError
from mlops.lifecycle.registry import CHAMPION, RegistryClient
from mlops.observability import plots
from mlops.stages.feature_tables import TRAINING, collect_split, load_feature_set
from mlops.stages.run import TaskRun

logger = logging.getLogger(__name__)

# The study's owner, kept on the study so another model's job cannot continue it.
OWNER_ATTRIBUTE = "registered_model_name"
BEST_PARAMS_TAG = "tuning.best_params"
# Intermediate scores reach the study (and its pruner) every this many boosting rounds.
REPORT_EVERY_ROUNDS = 25


class SpreadTPESampler(optuna.samplers.TPESampler):
    """TPE whose random draws differ in each Spark task that unpickles it.

    MLflow's Spark study ships one pickled sampler to every task; unchanged, tasks running at
    once would draw the same start-up trials.
    """

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.reseed_rng()


class TuningTimeout(Exception):
    """The study's time ran out while a trial was training."""


@dataclass(frozen=True)
class TuningResult:
    study_name: str
    best_trial: int
    best_rmse: float
    default_rmse: float | None
    params: TrainingParams
    states: dict
    validation_range: str

    def tags(self) -> dict:
        """What the registered version records of its tuning."""
        searched = {name: getattr(self.params, name) for name in TUNABLE}
        return {"tuning.study": self.study_name, "tuning.best_trial": str(self.best_trial),
                "tuning.best_validation_rmse": f"{self.best_rmse:.6g}",
                "tuning.default_validation_rmse": "" if self.default_rmse is None
                else f"{self.default_rmse:.6g}",
                "tuning.validation_range": self.validation_range,
                BEST_PARAMS_TAG: json.dumps(searched, sort_keys=True)}

    def line(self) -> str:
        against = f" against {self.default_rmse:.3f} with the default params" if self.default_rmse else ""
        return (f"tuned: best trial {self.best_trial} of study {self.study_name}, validation rmse "
                f"{self.best_rmse:.3f}{against}")


class Objective:
    """One trial: sample the space, train with early stopping, return the validation rmse.

    It carries its rows with it, so Spark ships it to the executor that runs the trial.
    """

    def __init__(self, space: SearchSpace, base: TrainingParams, fit: tuple, validation: tuple,
                 deadline: float, num_threads: int = 1):
        self.space, self.base, self.fit, self.validation = space, base, fit, validation
        self.deadline, self.num_threads = deadline, num_threads

    def __call__(self, trial) -> float:
        import optuna

        params = self.space.sample(trial, self.base)

        def after_round(round_number, rmse):
            if time.time() > self.deadline:
                raise TuningTimeout(f"the tuning time ran out at round {round_number}")
            if round_number % REPORT_EVERY_ROUNDS == 0:
                trial.report(rmse, round_number)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {round_number}, validation rmse {rmse:.4f}")

        rmse, best_round = training.validation_rmse(self.fit, self.validation, params, self.num_threads,
                                                    after_round=after_round)
        trial.set_user_attr("best_round", best_round)
        return rmse


@contextlib.contextmanager
def _stable_enough():
    """Optuna features we rely on that it still calls experimental: quiet about it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def run_study(study_name: str, model_name: str, objective, trials: int, parallelism: int,
              timeout_seconds: float, seed: int):
    """Run ``objective`` until the study holds ``trials`` finished trials; the study, reloaded.

    A study of another model under the same name is refused. A study that already holds
    finished trials (a rerun) runs only the rest. Its trials prune with Optuna's median rule.
    """
    from mlflow.optuna.storage import MlflowStorage
    from mlflow.pyspark.optuna.study import MlflowSparkStudy

    storage = MlflowStorage(experiment_id=mlflow.active_run().info.experiment_id)
    # Constant liar: a trial running elsewhere counts as a poor one, so parallel trials spread out.
    with _stable_enough():
        sampler = SpreadTPESampler(seed=seed, constant_liar=True)
    study = MlflowSparkStudy(study_name, storage, sampler=sampler, pruner=optuna.pruners.MedianPruner())
    owner = study.user_attrs.get(OWNER_ATTRIBUTE)
    if study.is_resumed_study and owner != model_name:
        raise ConfigError(f"parameter 'tuning_study_name': the study '{study_name}' belongs to model "
                          f"'{owner}', not '{model_name}'; choose another study name")
    if not study.is_resumed_study:
        study.set_user_attr(OWNER_ATTRIBUTE, model_name)
    finished = [trial for trial in study.trials if trial.state.is_finished()]
    remaining = trials - len(finished)
    if remaining > 0:
        logger.info("study %s: %d trials to run, %d at a time (%d finished before)", study_name, remaining,
                    min(parallelism, remaining), len(finished))
        study.optimize(objective, n_trials=remaining, timeout=timeout_seconds,
                       n_jobs=min(parallelism, remaining), catch=(Exception,))
    else:
        logger.info("study %s already holds %d finished trials: none to run", study_name, len(finished))
    return optuna.load_study(study_name=study_name, storage=storage)


def tuning_sets(dataset, config: TrainingConfig):
    """(fit, validation, ranges) of ``dataset``: the training part's rows only, split out of time."""
    fit, validation, sampling = collect_split(dataset, config, config.tuning_split(),
                                              parts=("fit", "validation"))
    names = list(features.FEATURE_COLUMNS)

    def pair(frame):
        return frame[names].astype("float64"), frame[features.LABEL_COLUMN]

    return pair(fit), pair(validation), sampling


def tune_hyperparameters(run: TaskRun[TrainingConfig]) -> TuningResult:
    """Search ``tuning_space`` around the job's parameters; the best trial's parameters."""
    config = run.config
    started = time.time()
    deadline = started + config.tuning_timeout_minutes * 60
    space, base = config.search_space(), config.training_params()
    dataset = load_feature_set(run.tables, config.training_data_start_date, config.training_data_end_date,
                               TRAINING)
    fit, validation, sampling = tuning_sets(dataset, config)
    objective = Objective(space, base, fit, validation, deadline,
                          num_threads=1 if config.tuning_parallelism > 1 else 0)
    study = run_study(config.study_name(), config.registered_model_name, objective, config.tuning_trials,
                      config.tuning_parallelism, config.tuning_timeout_minutes * 60, config.seed)
    default = default_rmse(Objective(space, base, fit, validation, deadline=float("inf")))
    result = _result(study, base, config, sampling["held_out_range"], default)
    _log(study, result, time.time() - started)
    return result


def default_rmse(objective: Objective) -> float:
    """The validation rmse of the objective's base params (clipped into the space), for comparison."""
    return objective(optuna.trial.FixedTrial(objective.space.values_of(objective.base)))


def _result(study, base: TrainingParams, config, validation_range: str,
            default: float | None) -> TuningResult:
    from optuna.trial import TrialState

    states = {}
    for trial in study.trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    if not complete:
        raise DataError(f"no tuning trial finished ({_counts(states)}): the tuning_timeout_minutes of "
                        f"{config.tuning_timeout_minutes:g} ran out first, or every trial failed (their "
                        f"errors are on the trial runs of study {config.study_name()}); raise "
                        "tuning_timeout_minutes or narrow tuning_space")
    best = min(complete, key=lambda trial: trial.value)
    # Early stopping found how many of the trial's rounds helped.
    rounds = best.user_attrs.get("best_round", best.params.get("num_rounds", base.num_rounds))
    params = dataclasses.replace(base, **{**best.params, "num_rounds": int(rounds)})
    return TuningResult(config.study_name(), best.number, float(best.value), default, params, states,
                        validation_range)


def _counts(states: dict) -> str:
    return ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "no trials"


def _log(study, result: TuningResult, seconds: float):
    from optuna.visualization.matplotlib import plot_optimization_history

    mlflow.log_metrics({"tuning_best_validation_rmse": result.best_rmse, "tuning_seconds": seconds,
                        **({"tuning_default_validation_rmse": result.default_rmse}
                           if result.default_rmse is not None else {})})
    mlflow.set_tags(result.tags())
    with _stable_enough():
        axes = plot_optimization_history(study)
    mlflow.log_figure(axes.figure, "tuning/optimization_history.png")
    plots.close(axes.figure)
    logger.info("%s (%s, %.0fs)", result.line(), _counts(result.states), seconds)


@dataclass(frozen=True)
class ChosenParams:
    params: TrainingParams
    description: str
    tags: dict


def choose_params(config: TrainingConfig, tuned: TuningResult | None) -> ChosenParams:
    """The hyperparameters train uses: this run's tuning, the Champion's last tuning, or the job's."""
    base = config.training_params()
    if tuned is not None:
        return ChosenParams(tuned.params, tuned.line(), tuned.tags())
    if config.training_params_from != "champion":
        return ChosenParams(base, "", {})
    registry = RegistryClient.from_config(config)
    champion = registry.alias_version(CHAMPION) if registry.exists() else None
    if champion is None:
        return ChosenParams(base, "no Champion to reuse tuned params from: the job's params", {})
    tags = registry.get_version(champion).tags
    if BEST_PARAMS_TAG not in tags:
        return ChosenParams(base, f"Champion version {champion} was not tuned: the job's params", {})
    reused = json.loads(tags[BEST_PARAMS_TAG])
    params = dataclasses.replace(base, **reused)
    carried = {key: value for key, value in tags.items() if key.startswith("tuning.")}
    return ChosenParams(params, f"reused the tuned params of Champion version {champion} "
                                f"(study {tags.get('tuning.study')}, trial {tags.get('tuning.best_trial')})",
                        {**carried, "tuning.reused_from_version": str(champion)})
