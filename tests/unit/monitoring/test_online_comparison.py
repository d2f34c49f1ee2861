"""The online comparison's statistics: verdicts, intervals, and rollouts simulated on a model's errors."""
import numpy as np
import pytest
from taxi_fares import features

from mlops.errors import ConfigError, DataError
from mlops.local.jobs import SUCCESS, run_notebook_as_job
from mlops.monitoring import online_comparison as oc
from mlops.stages.online_comparison import VERDICT_EVENT
from support.jobs import telemetry_items
from support.spark_cluster import REPO_ROOT

SEEDS = range(100)
PLAN = "10,50,100"


@pytest.fixture(scope="module")
def residuals(fare_model):
    """Held-out errors of a fare model trained on generated trips: the heavy tails of real residuals."""
    _, held_out, predictions = fare_model
    return (held_out[features.LABEL_COLUMN] - predictions).to_numpy()


def simulate(residuals, plan: oc.RolloutPlan, settings, worse: float, seed: int):
    """One rollout: labelled rows arrive in looks of half a step; returns (last action, rows seen)."""
    rng = np.random.default_rng(seed)
    champion = challenger = oc.ArmErrors(0, 0.0, 0.0, 0.0)
    share, at_step, seen, look = plan.shares[0], 0, 0, plan.rows_per_step // 2
    while seen < plan.planned_rows:
        to_challenger = rng.random(look) < share / 100
        errors = rng.choice(residuals, look)
        champion += oc.ArmErrors.of(errors[~to_challenger])
        challenger += oc.ArmErrors.of(errors[to_challenger] * worse)
        seen, at_step = seen + look, at_step + look
        decision = plan.decide(share, at_step, oc.compare(champion, challenger, settings))
        if decision.action in (oc.ROLL_BACK, oc.PROMOTE):
            return decision.action, seen
        if decision.action == oc.STEP_UP:
            share, at_step = decision.share, 0
    return oc.HOLD, seen


def test_a_worse_challenger_is_rolled_back_and_an_equal_one_is_not_in_95_of_100_rollouts(residuals):
    settings = oc.ComparisonSettings(planned_looks=4)
    relative_variance = oc.ArmErrors.of(residuals).relative_variance
    plan = oc.RolloutPlan.for_power(PLAN, relative_variance, settings)

    worse = [simulate(residuals, plan, settings, 1.1, seed) for seed in SEEDS]
    equal = [simulate(residuals, plan, settings, 1.0, seed) for seed in SEEDS]

    rolled_back = sum(action == oc.ROLL_BACK for action, _ in worse)
    wrongly_rolled_back = sum(action == oc.ROLL_BACK for action, _ in equal)
    print(f"\nrmse 10% worse: rolled back in {rolled_back} of 100 rollouts within {plan.planned_rows:,} "
          f"labelled rows (median {int(np.median([rows for _, rows in worse])):,}); equal: rolled back in "
          f"{wrongly_rolled_back} of 100, promoted in {sum(action == oc.PROMOTE for action, _ in equal)}")
    assert rolled_back >= 95
    assert wrongly_rolled_back <= 5


def test_shadow_pairs_judge_with_fewer_rows_than_a_split(residuals):
    rng = np.random.default_rng(3)
    errors = rng.choice(residuals, 4000)
    # The challenger errs like the champion on each trip, 10% more, with a little noise of its own.
    shadow = errors * 1.1 + rng.normal(0, 0.2, len(errors))
    paired = oc.compare(None, None, paired=oc.PairedErrors.of(errors, shadow))
    split = oc.compare(oc.ArmErrors.of(errors[:2000]), oc.ArmErrors.of(shadow[2000:]))

    assert paired.verdict == oc.KEEP and paired.paired
    assert paired.ratio_low < paired.rmse_ratio < paired.ratio_high
    assert paired.ratio_high - paired.ratio_low < (split.ratio_high - split.ratio_low) / 3


def test_too_few_rows_say_how_many_more_are_needed(residuals):
    few = oc.compare(oc.ArmErrors.of(residuals[:500]), oc.ArmErrors.of(residuals[500:560]))
    assert few.verdict == oc.NOT_ENOUGH_DATA and few.rows_needed == 80
    close = oc.compare(oc.ArmErrors.of(residuals[:3000]), oc.ArmErrors.of(residuals[3000:6000] * 1.02))
    assert close.verdict == oc.NOT_ENOUGH_DATA and close.rows_needed > 0
    assert "more labelled rows needed" in close.line()
    settled = oc.compare(oc.ArmErrors.of(residuals[:3000]),
                         oc.ArmErrors.of(residuals[3000:3000 + 6000 + close.rows_needed] * 1.02))
    assert settled.rows_needed < close.rows_needed


@pytest.mark.parametrize("text, message", [
    ("10,fifty,100", "a rollout plan is percentages separated by commas, such as 10,50,100; "
                     "got '10,fifty,100'"),
    ("10,50", "a rollout plan rises from above 0 to 100, such as 10,50,100; got '10,50'"),
    ("50,10,100", "a rollout plan rises from above 0 to 100"),
    ("0,100", "a rollout plan rises from above 0 to 100"),
])
def test_a_bad_rollout_plan_is_named(text, message):
    with pytest.raises(ConfigError, match=message):
        oc.RolloutPlan.parse(text, 100)


@pytest.mark.parametrize("options, message", [
    ({"alpha": 1.5}, "the comparison's alpha must be between 0 and 1, got 1.5"),
    ({"margin": -0.1}, "the comparison's margin must be at least 0 and below 1, got -0.1"),
    ({"planned_looks": 0}, "the comparison needs at least 1 planned look, got 0"),
])
def test_bad_comparison_settings_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        oc.ComparisonSettings(**options)


def test_a_plan_steps_up_on_no_worse_holds_without_rows_and_promotes_only_when_shown_no_worse(residuals):
    plan = oc.RolloutPlan.parse(PLAN, 1000)
    equal = oc.compare(oc.ArmErrors.of(residuals[:8000]), oc.ArmErrors.of(residuals[8000:16000]))
    worse = oc.compare(oc.ArmErrors.of(residuals[:8000]), oc.ArmErrors.of(residuals[8000:16000] * 1.3))
    assert plan.decide(10, 999, equal).action == oc.HOLD
    assert (plan.decide(10, 1000, equal).action, plan.decide(10, 1000, equal).share) == (oc.STEP_UP, 50)
    assert plan.decide(50, 1000, equal).action == (oc.PROMOTE if equal.verdict == oc.PROMOTE else oc.HOLD)
    assert (plan.decide(50, 10, worse).action, plan.decide(50, 10, worse).share) == (oc.ROLL_BACK, 0)
    with pytest.raises(ConfigError, match="share 20% is not a step of the plan 10,50,100"):
        plan.decide(20, 1000, equal)


def test_the_log_s_arms_are_summed_in_spark_as_in_numpy_and_shadow_pairs_are_preferred(spark, residuals):
    import datetime

    from mlops.inference import engine
    from mlops.monitoring import online_log

    rng = np.random.default_rng(5)
    day = datetime.date(2016, 3, 2)
    champion, challenger = rng.choice(residuals, 3000), rng.choice(residuals, 1000) * 1.3
    shadowed = champion[:2000] * 1.3 + rng.normal(0, 0.1, 2000)
    rows = ([(f"c{i}", "1", "champion", float(error)) for i, error in enumerate(champion)]
            + [(f"x{i}", "2", "challenger", float(error)) for i, error in enumerate(challenger)]
            + [(f"c{i}", "2", "shadow", float(error)) for i, error in enumerate(shadowed)]
            + [("old", "0", "champion", 99.0), ("unlabelled", "1", "champion", None)])
    log = spark.createDataFrame(
        [(request, version, arm, 10.0, None if error is None else 10.0 - error, day)
         for request, version, arm, error in rows],
        f"{engine.REQUEST_ID} string, {engine.MODEL_VERSION} string, {engine.ARM} string, "
        f"{engine.PREDICTION} double, {engine.LABEL} double, {engine.PICKUP_DATE} date")

    split_champion, split_challenger, paired = online_log.arm_errors(log, "1", "2", day, day)

    assert split_champion.rows == 3000 and split_challenger.rows == 1000
    assert split_champion.sum_squared == pytest.approx(oc.ArmErrors.of(champion).sum_squared)
    assert split_challenger.sum_fourth == pytest.approx(oc.ArmErrors.of(challenger).sum_fourth)
    assert paired.sum_cross == pytest.approx(oc.PairedErrors.of(champion[:2000], shadowed).sum_cross)
    verdict = online_log.compare_log(log, "1", "2", day, day)
    assert verdict.paired and verdict.verdict == oc.KEEP and verdict.champion_rows == 2000
    outside = online_log.compare_log(log, "1", "2", day + datetime.timedelta(days=1),
                                     day + datetime.timedelta(days=2))
    assert outside.verdict == oc.NOT_ENOUGH_DATA and outside.champion_rows == 0
    with pytest.raises(DataError, match="the inference log has no column arm: it was written before"):
        online_log.arm_errors(log.drop(engine.ARM), "1", "2", day, day)


def test_compare_online_judges_the_aliases_on_the_log_and_names_what_is_missing(
        spark, mlops_home, residuals, tmp_path, capsys):
    import datetime

    from mlops import platform
    from mlops.cli import build_parser
    from mlops.data.tables import TableStore
    from mlops.inference import engine
    from mlops.lifecycle.registry import RegistryClient

    def cli(*words):
        args = build_parser().parse_args(["model", "compare-online", "fares", "--location", "dbfs:/tables",
                                          *words])
        code = args.func(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    with platform.mlflow_store_environment():
        client = RegistryClient("fares").client
        client.create_registered_model("fares")
        versions = [client.create_model_version("fares", source=str(tmp_path)).version for _ in range(2)]
        RegistryClient("fares").set_alias("Champion", str(versions[0]))
    code, _, err = cli()
    assert code == 1 and "model fares has no Challenger: an online comparison needs both aliases" in err

    with platform.mlflow_store_environment():
        RegistryClient("fares").set_alias("Challenger", str(versions[1]))
    rng = np.random.default_rng(8)
    day = datetime.date(2016, 3, 2)
    rows = [(f"r{i}", str(versions[i % 2]), ("champion", "challenger")[i % 2], 10.0,
             10.0 - float(error) * (1.4 if i % 2 else 1.0), day)
            for i, error in enumerate(rng.choice(residuals, 6000))]
    TableStore(spark, "dbfs:/tables").write(spark.createDataFrame(
        rows, f"{engine.REQUEST_ID} string, {engine.MODEL_VERSION} string, {engine.ARM} string, "
              f"{engine.PREDICTION} double, {engine.LABEL} double, {engine.PICKUP_DATE} date"),
        "taxi_fares_predictions")

    code, out, err = cli("--start", "2016-03-01", "--end", "2016-03-02")
    assert code == 0, err
    assert out.startswith(f"model fares: challenger version {versions[1]} against champion version "
                          f"{versions[0]}: keep: challenger rmse") and "3,000 and 3,000 split rows" in out
    code, out, _ = cli("--start", "2016-03-03")
    assert code == 0 and "not enough data" in out

    # The monitoring job's compare_online task says the same, and hands it on.
    parameters = {"wheel_path": str(REPO_ROOT / "dist"), "registered_model_name": "fares",
                  "table_location": "dbfs:/tables", "monitoring_start_date": "2016-03-01",
                  "monitoring_end_date": "2016-03-02"}
    record = run_notebook_as_job(REPO_ROOT / "orchestrator" / "taxi_fares_compare_online.py", parameters,
                                 progress=print, spark=spark)
    values = record.tasks["taxi_fares_compare_online"]["task_values"]
    assert record.state == SUCCESS and values["online_verdict"] == "keep"
    assert values["online_comparison"].startswith(
        f"challenger version {versions[1]} against champion version {versions[0]}: keep: challenger rmse")
    items = telemetry_items(mlops_home, record.run_id, "compare_online")
    [event] = [item for item in items if item["name"] == VERDICT_EVENT]
    assert event["customDimensions"]["challenger_version"] == str(versions[1])
    ratio = [item for item in items if item["name"] == "online_comparison.rmse_ratio"]
    assert ratio and ratio[0]["value"] > 1.2

    with pytest.raises(SystemExit):
        cli("--start", "March")
    assert "expected a date YYYY-MM-DD, got 'March'" in capsys.readouterr().err
    code, _, err = cli("--alpha", "2")
    assert code == 1 and "the comparison's alpha must be between 0 and 1, got 2.0" in err
