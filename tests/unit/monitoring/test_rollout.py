"""A Challenger's rollout look by look: start, step up, promote, roll back; the endpoint's traffic."""
import datetime
import uuid

import numpy as np
import pytest
from databricks.sdk import WorkspaceClient

from mlops.errors import ConfigError
from mlops.lifecycle import rollout
from mlops.monitoring import online_comparison as oc
from support.databricks_api import databricks_api  # noqa: F401

MODEL = "fares"
DAY = datetime.date(2016, 3, 2)
PLAN = "10,50,100"


@pytest.fixture
def look(spark, mlops_home):
    """look(**params) runs task compare_online's two stages, as the notebook does; the rollout decision."""
    from mlops.config import MonitoringConfig
    from mlops.local.dbutils import LocalDbutils
    from mlops.local.session import LocalSession
    from mlops.orchestration import task_run
    from mlops.platform.context import RunContext, bind as notebook_context
    from mlops.stages.online_comparison import compare_online_arms
    from mlops.stages.rollout import advance_rollout

    def run(**params):
        job_run_id = f"rollout-{uuid.uuid4().hex[:6]}"
        session = LocalSession(spark=spark, job_name="taxi_fares_monitoring", job_run_id=job_run_id)
        session.task_key = "compare_online"
        context = RunContext(job_name=session.job_name, job_run_id=job_run_id, task="compare_online")
        config = MonitoringConfig.from_params({
            "registered_model_name": MODEL, "table_location": "dbfs:/tables",
            "monitoring_start_date": str(DAY), "monitoring_end_date": str(DAY), "rollout_plan": PLAN,
            "rollout_rows_per_step": "1000", **params})
        dbutils = LocalDbutils(session)
        with notebook_context(context), task_run("compare_online", config, spark, dbutils) as task:
            comparison = task.stage("compare_online", compare_online_arms)
            return task.stage("rollout", advance_rollout, comparison)

    return run


def test_a_rollout_steps_up_promotes_a_better_challenger_and_rolls_a_worse_one_back(
        spark, look, tmp_path, capsys):
    from mlops import platform
    from mlops.cli import build_parser
    from mlops.data.tables import TableStore
    from mlops.inference import engine
    from mlops.lifecycle.registry import CHAMPION, RegistryClient

    rng = np.random.default_rng(3)
    store = TableStore(spark, "dbfs:/tables")
    rows = []

    def served(champion: str, challenger: str, pairs: int, challenger_scale: float):
        """Shadowed trips of both versions, labelled, scored now: the challenger's errors scaled."""
        now = datetime.datetime.now(datetime.timezone.utc)
        for error in map(float, rng.normal(0, 3.0, pairs)):
            request = uuid.uuid4().hex
            rows.append((request, champion, "champion", 10.0 + error, 10.0, DAY, now))
            shadow_error = error * challenger_scale + float(rng.normal(0, 0.2))
            rows.append((request, challenger, "shadow", 10.0 + shadow_error, 10.0, DAY, now))
        store.write(spark.createDataFrame(rows, (
            f"{engine.REQUEST_ID} string, {engine.MODEL_VERSION} string, {engine.ARM} string, "
            f"{engine.PREDICTION} double, {engine.LABEL} double, {engine.PICKUP_DATE} date, "
            f"{engine.SCORED_AT} timestamp")), "taxi_fares_predictions")

    with platform.mlflow_store_environment():
        registry = RegistryClient(MODEL)
        registry.client.create_registered_model(MODEL)
        versions = [registry.client.create_model_version(MODEL, source=str(tmp_path)).version
                    for _ in range(3)]
        for version in versions:
            registry.set_validation_status(version, "PASSED")
        first, second, third = map(str, versions)
        registry.set_alias(CHAMPION, first)
        registry.set_alias("Challenger", second)
    served(first, second, 50, 1.0)

    started = look()
    assert (started.action, started.share) == ("start", 10)
    with platform.mlflow_store_environment():
        assert rollout.served_share(registry, second) == 10
    # Rows scored before the step began do not count towards it.
    held = look()
    assert held.action == oc.HOLD and held.reason.startswith("0 of 1,000 labelled rows at 10%")

    served(first, second, 600, 0.9)
    stepped = look()
    assert (stepped.action, stepped.share) == (oc.STEP_UP, 50) and "not worse so far" in stepped.reason
    served(first, second, 600, 0.9)
    promoted = look()
    assert promoted.action == oc.PROMOTE and promoted.reason.startswith("no worse than the champion")
    with platform.mlflow_store_environment():
        assert registry.alias_version(CHAMPION) == second
        assert rollout.read(registry, second).state == rollout.PROMOTED
        assert rollout.served_share(registry, second) == 0
        registry.set_alias("Challenger", third)
    assert look().action == "start"

    served(second, third, 600, 1.4)
    rolled_back = look()
    assert (rolled_back.action, rolled_back.share) == (oc.ROLL_BACK, 0)
    assert rolled_back.reason.startswith("the challenger is worse: keep: challenger rmse")
    assert look().reason == f"the rollout of version {third} has rolled back"
    with platform.mlflow_store_environment():
        assert registry.alias_version(CHAMPION) == second
        assert rollout.served_share(registry, third) == 0

    # The steps, their times and their evidence are in the model's history.
    args = build_parser().parse_args(["model", "show", MODEL])
    assert args.func(args) == 0
    shown = capsys.readouterr().out
    for event in ("rollout started", "rollout stepped up", "rollout promoted", "became Champion",
                  "rollout rolled back"):
        assert event in shown, event
    assert "online rollout" in shown and "to_share=50" in shown


def test_without_a_plan_the_rollout_is_off_and_a_bad_share_tag_is_named(look, spark, tmp_path):
    from mlops import platform
    from mlops.errors import RegistryError
    from mlops.lifecycle.registry import RegistryClient

    assert look(rollout_plan="").action == "off"
    with platform.mlflow_store_environment():
        registry = RegistryClient("other")
        registry.client.create_registered_model("other")
        version = registry.client.create_model_version("other", source=str(tmp_path)).version
        registry.set_tags(version, {rollout.STATE_TAG: rollout.RUNNING, rollout.SHARE_TAG: "half",
                                    rollout.PLAN_TAG: PLAN})
        with pytest.raises(RegistryError, match=f"model 'other' version {version} has rollout_share='half', "
                                                "not a percentage; set it to a step of its plan 10,50,100"):
            rollout.read(registry, version)


def test_the_endpoint_s_traffic_follows_the_rollout(databricks_api):  # noqa: F811
    from mlops.deploy.serving_endpoint import set_traffic

    def entity(name, version):
        return {"name": name, "entity_name": "main.taxi_fares.taxi_fares_model", "entity_version": version,
                "workload_size": "Small", "scale_to_zero_enabled": True}

    databricks_api.endpoints["taxi-fares-dev"] = {
        "name": "taxi-fares-dev", "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "config": {"served_entities": [entity("champion", "3"), entity("challenger", "3")]}}
    client = WorkspaceClient(host=databricks_api.url, token=databricks_api.token)

    assert set_traffic(client, "taxi-fares-dev", "3", "4", 10) == {"champion": 90, "challenger": 10}
    [update] = databricks_api.calls("/serving-endpoints/taxi-fares-dev/config", "PUT")
    sent = update.json()
    assert sent["traffic_config"]["routes"] == [
        {"served_entity_name": "champion", "traffic_percentage": 90},
        {"served_entity_name": "challenger", "traffic_percentage": 10}]
    assert [(item["name"], item["entity_version"], item["workload_size"], item["scale_to_zero_enabled"])
            for item in sent["served_entities"]] == [("champion", "3", "Small", True),
                                                     ("challenger", "4", "Small", True)]

    # Bad input and a busy endpoint are named.
    with pytest.raises(Exception, match="Endpoint taxi-fares-dev is currently being updated"):
        set_traffic(client, "taxi-fares-dev", "3", "4", 50)
    with pytest.raises(ConfigError, match="a challenger share is from 0 to 100 percent, got 120"):
        set_traffic(client, "taxi-fares-dev", "3", "4", 120)
    databricks_api.endpoints["solo"] = {"name": "solo", "state": {"config_update": "NOT_UPDATING"},
                                        "config": {"served_entities": [entity("champion", "3")]}}
    with pytest.raises(ConfigError, match="serving endpoint 'solo' has no served entity challenger "
                                          r"\(it has champion\); deploy the bundle"):
        set_traffic(client, "solo", "3", "4", 10)
    with pytest.raises(Exception, match="Serving endpoint with name 'gone' does not exist"):
        set_traffic(client, "gone", "3", "4", 10)
