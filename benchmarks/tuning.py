"""Tuning benchmark: the tuning stage's trials with parallelism 1 against 2, and what tuning buys.

``python -m benchmarks.tuning`` from the repository root (``make bench`` runs it last). Trips
of the realistic generator for January 2016 are cleaned and turned into the point-in-time
feature set once (cached under ``benchmarks/.data/``). With the training job's default split,
the same N trials (BENCH_TUNING_TRIALS, default 8) run twice through the stage's own study
code, on the local Spark: ``tuning_parallelism`` 1, then 2, each a new study with the same
seed, timed by wall clock. Then both the job's default params and the best trial's params train
on the whole training part and are scored on the held-out rows after the gap, which no trial saw.
"""
import dataclasses
import datetime
import os
import sys
import time

from benchmarks import common

TRIPS = 200_000
START, END = datetime.date(2016, 1, 1), datetime.date(2016, 1, 31)


def feature_set(spark):
    """January's point-in-time feature set, with pickup times, generated once."""
    from taxi_fares import features
    from taxi_fares.data import generate_trips

    target = common.DATA_DIR / f"tuning_features_{TRIPS}"
    if not (target / "_SUCCESS").exists():
        print(f"generating {TRIPS} January trips and their features into {target}", flush=True)
        trips = features.clean_trips(generate_trips(spark, TRIPS, START, END, seed=11))
        features.build_training_set(trips, features.pickup_zip_features(trips),
                                    features.dropoff_zip_features(trips)).write.mode("overwrite").parquet(
            str(target))
    return spark.read.parquet(str(target))


def timed_study(config, fit, validation, parallelism: int) -> tuple[float, object]:
    import mlflow

    from mlops.stages import tuning

    space, base = config.search_space(), config.training_params()
    objective = tuning.Objective(space, base, fit, validation, deadline=time.time() + 3600,
                                 num_threads=1 if parallelism > 1 else 0)
    with mlflow.start_run(run_name=f"parallelism {parallelism}"):
        started = time.perf_counter()
        study = tuning.run_study(f"bench-p{parallelism}", common.MODEL_NAME, objective, config.tuning_trials,
                                 parallelism, 3600, config.seed)
        seconds = time.perf_counter() - started
    return seconds, study


def held_out_rmse(dataset, config, params) -> float:
    from taxi_fares import evaluation, features, training

    from mlops.stages.feature_tables import collect_split

    train, test, _ = collect_split(dataset, config)
    names = list(features.FEATURE_COLUMNS)
    booster = training.train_model(train[names].astype("float64"), train[features.LABEL_COLUMN], params)
    predictions = training.predict(booster, test[names].astype("float64"))
    return evaluation.regression_metrics(test[features.LABEL_COLUMN].to_numpy(), predictions)["rmse"]


def section(saved: dict) -> str:
    """The results.md section of a saved tuning run."""
    one, two = saved["parallelism"]["1"], saved["parallelism"]["2"]
    lines = ["", "# Tuning benchmark", "",
             f"Run: {saved['started']} (UTC), `python -m benchmarks.tuning`: {saved['trials']} trials of "
             f"the default search space, on {saved['fit_rows']:,} fit and {saved['validation_rows']:,} "
             f"validation rows of {TRIPS:,} generated January trips (the realistic generator), on "
             f"`local[{common.CORES}]`; each study new, with the same seed.", "",
             "| tuning_parallelism | wall time (s) | finished trials | pruned | best validation rmse |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for level, run in (("1", one), ("2", two)):
        lines.append(f"| {level} | {run['seconds']:.1f} | {run['complete']} | {run['pruned']} | "
                     f"{run['best_rmse']:.4f} |")
    gain = 1 - saved["tuned_held_out_rmse"] / saved["default_held_out_rmse"]
    lines += ["", f"- parallelism 2 against 1: {one['seconds'] / two['seconds']:.2f}x faster",
              f"- held-out rmse (the rows after the gap, never seen by a trial): default params "
              f"{saved['default_held_out_rmse']:.4f}, tuned {saved['tuned_held_out_rmse']:.4f} "
              f"({gain:+.1%} {'better' if gain > 0 else 'worse: tuning did not beat the defaults here'})",
              f"- tuned params: {saved['tuned_params']}", ""]
    return "\n".join(lines)


def main():
    common.use_working_tree()
    trials = os.environ.get("BENCH_TUNING_TRIALS", "8")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    import mlflow

    from mlops.config import TrainingConfig
    from mlops.stages import tuning

    with common.bench_store() as (_, tracking_uri):
        spark = common.spark_session()
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_experiment("bench-tuning")
        config = TrainingConfig(training_data_start_date=START, training_data_end_date=END,
                                tuning_trials=trials)
        dataset = feature_set(spark).cache()
        fit, validation, _ = tuning.tuning_sets(dataset, config)
        saved = {"started": started, "trials": int(trials), "fit_rows": len(fit[0]),
                 "validation_rows": len(validation[0]), "parallelism": {}}
        studies = {}
        for parallelism in (1, 2):
            print(f"{trials} trials with tuning_parallelism {parallelism}", flush=True)
            seconds, studies[parallelism] = timed_study(config, fit, validation, parallelism)
            states = [trial.state.name for trial in studies[parallelism].trials]
            saved["parallelism"][str(parallelism)] = {
                "seconds": seconds, "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
                "best_rmse": studies[parallelism].best_value}
        best = min(studies.values(), key=lambda study: study.best_value).best_trial
        tuned = dataclasses.replace(config.training_params(), **{
            **best.params, "num_rounds": int(best.user_attrs["best_round"])})
        saved["tuned_params"] = {name: getattr(tuned, name) for name in best.params}
        saved["default_held_out_rmse"] = held_out_rmse(dataset, config, config.training_params())
        saved["tuned_held_out_rmse"] = held_out_rmse(dataset, config, tuned)
        spark.stop()
        common.save_section("tuning", saved, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
