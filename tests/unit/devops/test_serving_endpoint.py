"""`mlops deploy serving`: the real databricks-sdk against a loopback workspace."""
import pytest

from support.databricks_api import FAKE_TOKEN

from .conftest import JOBS_DIR
from .test_deploy_cli import mlops

DEV_MODEL, PROD_MODEL = "taxi_fares", "prod.taxi_fares.taxi_fares_model"


@pytest.fixture
def workspace(databricks_api, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DATABRICKS_HOST", databricks_api.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", FAKE_TOKEN)
    return databricks_api


def serving(*arguments, env="dev"):
    return mlops("deploy", "serving", "--env", env, "--jobs-dir", JOBS_DIR, *arguments)


def served(api, name):
    config = api.endpoints[name]["config"]
    versions = {entity["name"]: entity["entity_version"] for entity in config["served_entities"]}
    routes = config["traffic_config"]["routes"]
    shares = {route["served_model_name"]: route["traffic_percentage"] for route in routes}
    return versions, shares, {tag["key"]: tag["value"] for tag in api.endpoints[name]["tags"]}


def test_a_first_deploy_without_a_champion_says_what_to_run_and_creates_nothing(workspace, capsys):
    assert serving() == 1
    assert ("model 'taxi_fares' is not registered in this workspace yet: run `mlops deploy trigger --env "
            "dev --job taxi_fares_training --wait` first; no serving endpoint was created"
            in capsys.readouterr().err)
    workspace.model_aliases[DEV_MODEL] = {"Challenger": "1"}
    assert serving() == 1
    assert "has no Champion version yet" in capsys.readouterr().err
    assert workspace.endpoints == {} and not workspace.calls("serving-endpoints", "POST")


def test_the_champion_is_served_then_canaried_then_rolled_back(workspace, capsys):
    workspace.model_aliases[DEV_MODEL] = {"Champion": "3"}
    assert serving() == 0
    assert served(workspace, "taxi-fares-dev") == ({"champion": "3"}, {"champion": 100},
                                                   {"champion_version": "3"})

    workspace.model_aliases[DEV_MODEL] = {"Champion": "4", "Challenger": "5"}
    assert serving("--canary-percent", "10") == 0
    tags = {"champion_version": "4", "previous_champion_version": "3"}
    assert served(workspace, "taxi-fares-dev") == ({"champion": "4", "challenger": "5"},
                                                   {"champion": 90, "challenger": 10}, tags)
    assert "version 4 (90%), 10% to Challenger version 5" in capsys.readouterr().out

    assert serving("--rollback") == 0
    versions, shares, tags = served(workspace, "taxi-fares-dev")
    assert (versions, shares) == ({"champion": "3"}, {"champion": 100})
    assert (tags["champion_version"], tags["previous_champion_version"]) == ("3", "4")
    assert len(workspace.calls("serving-endpoints", "POST")) == 1
    assert len(workspace.calls("serving-endpoints/taxi-fares-dev/config", "PUT")) == 2


def test_unity_catalog_models_are_read_with_their_aliases(workspace):
    workspace.model_aliases[PROD_MODEL] = {"Champion": "7"}
    assert serving(env="prod") == 0
    assert served(workspace, "taxi-fares-model-prod")[0] == {"champion": "7"}
    assert workspace.calls(f"unity-catalog/models/{PROD_MODEL}", "GET")


@pytest.mark.parametrize("arguments, message", [
    (("--canary-percent", "80"), "--canary-percent must be between 0 and 50, got 80"),
    (("--canary-percent", "10"), "--canary-percent 10 needs a Challenger version other than the Champion"),
    (("--rollback",), "endpoint taxi-fares-dev has no earlier Champion to roll back to"),
])
def test_bad_serving_requests_are_named(workspace, capsys, arguments, message):
    workspace.model_aliases[DEV_MODEL] = {"Champion": "3"}
    assert serving(*arguments) == 1
    assert message in capsys.readouterr().err
