"""Champion and Challenger on one server: a sticky split, a shadow, refusals, and a switch under load."""
import time

import mlflow
import pytest
from deltalake import DeltaTable

from mlops.errors import ConfigError
from mlops.serving.start import ServeSettings

from .conftest import MODEL, call
from .test_alias_switch_and_logging import BODY, move_champion, under_load, wait_for


def set_challenger(version):
    mlflow.MlflowClient().set_registered_model_alias(MODEL, "Challenger", version)


@pytest.fixture
def aliases(registry_home):
    """Champion on the first version, Challenger on the second; put back afterwards."""
    _, (first, second, failed) = registry_home
    move_champion(first)
    set_challenger(second)
    yield first, second, failed
    move_champion(first)
    mlflow.MlflowClient().delete_registered_model_alias(MODEL, "Challenger")


def invoke(server, key: str):
    status, headers, answer = call(server, "/invocations", BODY, headers={"X-Request-Key": key})
    assert status == 200, answer
    return headers["X-Model-Arm"], headers["X-Model-Version"], answer["predictions"][0]


def test_a_split_is_sticky_by_key_and_the_log_records_each_row_s_arm(serve, aliases, tmp_path):
    first, second, _ = aliases
    log = tmp_path / "log"
    server = serve(log_table=log, flush_rows=50, flush_seconds=0.2, challenger_percent=30)

    answers = {f"trip-{number}": invoke(server, f"trip-{number}") for number in range(200)}
    retried = {key: invoke(server, key) for key in list(answers)[:40]}

    arms = [arm for arm, _, _ in answers.values()]
    assert 0.2 < arms.count("challenger") / len(arms) < 0.4
    assert all(retried[key] == answers[key] for key in retried)
    assert {(arm, version) for arm, version, _ in answers.values()} == {
        ("champion", first), ("challenger", second)}
    assert call(server, "/health")[2]["challenger_percent"] == 30
    wait_for(lambda: server.app.request_log.written == 240)
    rows = DeltaTable(str(log)).to_pyarrow_table().to_pandas()
    assert set(zip(rows["arm"], rows["model_version"], rows["model_alias"])) == {
        ("champion", first, "Champion"), ("challenger", second, "Challenger")}
    assert (rows["arm"] == "challenger").sum() == arms.count("challenger") + sum(
        arm == "challenger" for arm, _, _ in retried.values())


def test_the_shadow_answers_with_the_champion_and_logs_both_under_one_request_id(serve, aliases, tmp_path):
    first, second, _ = aliases
    log = tmp_path / "log"
    server = serve(log_table=log, flush_rows=50, flush_seconds=0.2, shadow=True)

    answered = [invoke(server, f"trip-{number}") for number in range(25)]

    assert {(arm, version) for arm, version, _ in answered} == {("champion", first)}
    wait_for(lambda: server.app.request_log.written == 50)
    rows = DeltaTable(str(log)).to_pyarrow_table().to_pandas()
    pairs = rows.pivot(index="request_id", columns="arm", values="model_version")
    assert len(pairs) == 25 and (pairs["champion"] == first).all() and (pairs["shadow"] == second).all()
    predictions = rows.pivot(index="request_id", columns="arm", values="prediction")
    assert (predictions["champion"] != predictions["shadow"]).all()


def test_the_challenger_moves_under_split_load_without_a_failed_request(serve, aliases):
    first, second, _ = aliases
    server = serve(poll_seconds=0.05, challenger_percent=50)
    answers = []

    def ask(worker: int, number: int):
        key = {"X-Request-Key": f"{worker}-{number}"}
        status, headers, _ = call(server, "/invocations", BODY, headers=key)
        answers.append((status, headers.get("X-Model-Arm"), headers.get("X-Model-Version")))

    with under_load(ask):
        set_challenger(first)
        wait_for(lambda: server.app.challenger_slot.current.version == first)
        time.sleep(0.3)

    assert {status for status, _, _ in answers} == {200}
    assert {(arm, version) for _, arm, version in answers} == {
        ("champion", first), ("challenger", second), ("challenger", first)}


def test_a_challenger_not_passed_refuses_the_split_with_the_reason(serve, aliases):
    _, _, failed = aliases
    set_challenger(failed)
    refused = (rf"cannot serve {MODEL}@Challenger: model '{MODEL}' version {failed} has "
               r"model_validation_status=FAILED; only PASSED versions are served")
    with pytest.raises(ConfigError, match=refused):
        serve(challenger_percent=10)
    mlflow.MlflowClient().delete_registered_model_alias(MODEL, "Challenger")
    with pytest.raises(ConfigError, match=f"model '{MODEL}' has no alias 'Challenger'"):
        serve(shadow=True)


def test_a_server_following_the_rollout_serves_the_share_it_has_reached(serve, aliases):
    from mlops.lifecycle import rollout
    from mlops.lifecycle.registry import RegistryClient

    _, second, _ = aliases
    registry = RegistryClient(MODEL)
    server = serve(follow_rollout=True)
    # No rollout yet: every request is the Champion's.
    assert {invoke(server, f"trip-{number}")[0] for number in range(50)} == {"champion"}
    try:
        rollout.record(registry, second, "10,50,100", 50, rollout.RUNNING)
        wait_for(lambda: call(server, "/health")[2]["challenger_percent"] == 50)
        arms = [invoke(server, f"trip-{number}")[0] for number in range(200)]
        assert 0.35 < arms.count("challenger") / len(arms) < 0.65
        rollout.record(registry, second, "10,50,100", 0, rollout.ROLLED_BACK)
        wait_for(lambda: call(server, "/health")[2]["challenger_percent"] == 0)
        assert {invoke(server, f"trip-{number}")[0] for number in range(50)} == {"champion"}
    finally:
        mlflow.MlflowClient().delete_model_version_tag(MODEL, second, rollout.STATE_TAG)


@pytest.mark.parametrize("options, message", [
    ({"follow_rollout": True, "challenger_percent": 10},
     "--follow-rollout takes the Challenger's share from its rollout; leave out --challenger-percent"),
    ({"follow_rollout": True, "alias": "Challenger"}, "--alias must be Champion, got Challenger"),
    ({"challenger_percent": 120}, "--challenger-percent must be from 0 to 100, got 120"),
    ({"challenger_percent": 10, "shadow": True},
     "--shadow answers every request with the Champion; leave out --challenger-percent"),
    ({"challenger_percent": 10, "alias": "Challenger"},
     "a split or a shadow serves the Champion beside the Challenger; "
     "--alias must be Champion, got Challenger"),
])
def test_bad_split_settings_are_named(options, message):
    with pytest.raises(ConfigError, match=message):
        ServeSettings(**options)
